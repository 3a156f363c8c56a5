"""Everything an engine needs, built once from a config: data on the device, agents, method,
topology, models with common initial values, and the holder groups of every shared block."""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from parse_dfl.config import Config
from parse_dfl.data import MultimodalDataset, load_dataset
from parse_dfl.data.partition import AgentSpec, global_test_indices, partition
from parse_dfl.graph import Topology
from parse_dfl.methods import METHODS, Method
from parse_dfl.models.blocks import param_blocks


@dataclass
class BlockGroup:
    """One shared block and its holders: the agents that average it together."""

    block: str
    group: str
    holders: list[int]
    tags: list[frozenset[str]] | None
    params: list[str]
    numel: int
    nbytes: int

    @property
    def label(self) -> str:
        return self.block if self.group == "all" else f"{self.block}@{self.group}"


@dataclass
class Setup:
    cfg: Config
    data: MultimodalDataset
    agents: list[AgentSpec]
    method: Method
    topology: Topology
    device: torch.device
    x: dict[str, torch.Tensor]
    y: torch.Tensor
    global_test: torch.Tensor
    train_idx: list[torch.Tensor]
    test_idx: list[torch.Tensor]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_setup(cfg: Config) -> Setup:
    """Load and partition the data and pick the method and topology (no models yet)."""
    if cfg.engine.threads:
        torch.set_num_threads(cfg.engine.threads)
    data = load_dataset(cfg.data)
    agents = partition(data, cfg)
    method = METHODS[cfg.method.name](cfg, data)
    topology = Topology(method.topology_config(cfg.topology), len(agents), cfg.seed)
    device = resolve_device(cfg.engine.device)
    x = {m: torch.from_numpy(v).to(device) for m, v in data.modalities.items()}
    y = torch.from_numpy(data.labels.astype(np.int64)).to(device)
    return Setup(
        cfg=cfg,
        data=data,
        agents=agents,
        method=method,
        topology=topology,
        device=device,
        x=x,
        y=y,
        global_test=torch.from_numpy(global_test_indices(agents)).to(device),
        train_idx=[torch.from_numpy(a.train_idx).to(device) for a in agents],
        test_idx=[torch.from_numpy(a.test_idx).to(device) for a in agents],
    )


def build_model(setup: Setup, agent: AgentSpec, device: torch.device | None = None) -> nn.Module:
    """One agent's model, initialised from its own seed: the same values in any process.
    On the `meta` device it has shapes only (what a process needs of others' agents)."""
    torch.manual_seed(setup.cfg.seed * 1_000_003 + agent.id)
    if device is not None and device.type == "meta":
        with device:
            return setup.method.build_model(agent)
    return setup.method.build_model(agent).to(device or setup.device)


def build_models(setup: Setup) -> list[nn.Module]:
    """One model per agent, each initialised from its own seed (then see `common_init`)."""
    return [build_model(setup, agent) for agent in setup.agents]


def holder_groups(setup: Setup, models: list[nn.Module]) -> list[BlockGroup]:
    """Group agents by (block, share group, parameter shapes): each group averages together."""
    found: dict[tuple, BlockGroup] = {}
    for agent, model in zip(setup.agents, models, strict=True):
        blocks = param_blocks(model)
        plan = setup.method.share_plan(agent, model)
        params = dict(model.named_parameters())
        for block, names in blocks.items():
            share = plan.get(block)
            if share is None:
                continue
            shapes = tuple((n, tuple(params[n].shape)) for n in names)
            key = (block, share.group, shapes)
            if key not in found:
                numel = sum(params[n].numel() for n in names)
                nbytes = sum(params[n].numel() * params[n].element_size() for n in names)
                found[key] = BlockGroup(block, share.group, [], [], names, numel, nbytes)
            g = found[key]
            g.holders.append(agent.id)
            assert g.tags is not None
            g.tags.append(share.tags)
    groups = sorted(found.values(), key=lambda g: (g.block, g.group, g.holders[0]))
    for g in groups:
        if g.tags is not None and not any(g.tags):
            g.tags = None  # no tag restriction: any two holders may link
    return groups


@torch.no_grad()
def common_init(
    models: list[nn.Module],
    groups: list[BlockGroup],
    owned: Container[int] | None = None,
    source: Callable[[int], nn.Module] | None = None,
) -> None:
    """Every shared block starts from its first holder's values (the usual DSGD start).

    `owned`: only these agents' models are set (a process of a distributed run); `source`:
    how to get the first holder's model when it is not in `models` (default: models[a])."""
    for g in groups:
        dst = [a for a in g.holders[1:] if owned is None or a in owned]
        if not dst:
            continue
        first = g.holders[0]
        src = dict((source(first) if source else models[first]).named_parameters())
        for a in dst:
            params = dict(models[a].named_parameters())
            for n in g.params:
                params[n].copy_(src[n])
