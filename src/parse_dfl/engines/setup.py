"""Everything an engine needs, built once from a config: data on the device, agents, method,
topology, models with common initial values, and the holder groups of every shared block."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from parse_dfl import registry
from parse_dfl.config import Config
from parse_dfl.data import MultimodalDataset, load_dataset
from parse_dfl.data.partition import AgentSpec, global_test_indices, partition
from parse_dfl.errors import UserError
from parse_dfl.evaluation import stratified_subsample
from parse_dfl.graph import Topology
from parse_dfl.graph.topology import derive_seed
from parse_dfl.models.blocks import param_blocks

if TYPE_CHECKING:
    from parse_dfl.methods import Method

DTYPES = {"float32": torch.float32, "float64": torch.float64}


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
    threads: str = ""  # torch threads of this run and why (for the run's first line)
    # validation (partition.val_fraction > 0): the analogues of global_test and test_idx,
    # for choosing hyperparameters without looking at the test split; empty without one
    val_global: torch.Tensor | None = None
    val_idx: list[torch.Tensor] = field(default_factory=list)
    # partition.select_fraction > 0 (or select_from: validation): each agent's own held-out
    # samples for the choices a method makes in training (Method.local_candidates)
    select_idx: list[torch.Tensor] = field(default_factory=list)


def held_out(setup: Setup) -> tuple[torch.Tensor, str]:
    """(samples, "validation" | "test"): what a diagnostic of a trained run reads. A tuning
    run (partition.val_fraction > 0) is read on its validation set, so nothing chosen from
    its probes or failed-sensor figures has seen the test split; any other run on the global
    test set."""
    if setup.val_global is not None:
        return setup.val_global, "validation"
    return setup.global_test, "test"


def resolve_device(name: str) -> torch.device:
    """The torch device of `engine.device`; one UserError when this machine lacks it (why: torch
    would fail later, mid-setup, with a traceback)."""
    where = "engine.device"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            where, f"'{name}' is not a device: use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(where, f"'{name}' is not available here (no CUDA device); use cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(
                where,
                f"'{name}' is not available here (this machine has {count} CUDA "
                f"device{'s' if count != 1 else ''}: cuda:0..cuda:{count - 1})",
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(where, f"'{name}' is not available here (no Apple MPS device); use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(where, f"'{name}' is not supported: use auto, cpu, cuda, cuda:N or mps")
    return device


def _check_batch_size(cfg: Config, agents: list[AgentSpec]) -> None:
    """Refuse a batch larger than all the agents' training samples together: each batch wraps
    around its agent's own samples, so such a batch only repeats them, at a cost that grows
    without bound (batch_size=10000 on a few dozen samples ran for ever). A batch a little
    above an agent's samples stays allowed, with a warning: it is common with small shards
    (dirichlet)."""
    sizes = [len(a.train_idx) for a in agents]
    total = sum(sizes)
    if cfg.train.batch_size > total:
        big = max(range(len(sizes)), key=sizes.__getitem__)
        small = min(range(len(sizes)), key=sizes.__getitem__)
        have = (
            f"every agent has {sizes[big]}"
            if sizes[small] == sizes[big]
            else f"agent {agents[small].id} has the fewest, {sizes[small]}; agent "
            f"{agents[big].id} the most, {sizes[big]}"
        )
        raise UserError(
            "train.batch_size",
            f"{cfg.train.batch_size} is more than all {total} training samples of the "
            f"{len(agents)} agents together, and a batch only repeats its agent's own samples "
            f"({have}): use a batch of at most {sizes[big]}",
        )
    short = [a.id for a, n in zip(agents, sizes, strict=True) if n < cfg.train.batch_size]
    if short:
        import warnings

        warnings.warn(
            f"train.batch_size={cfg.train.batch_size} is more than the training samples of "
            f"{len(short)} of {len(agents)} agents (fewest: {min(sizes)}); their batches "
            "repeat samples",
            UserWarning,
            stacklevel=2,
        )


def choose_threads(requested: int | None) -> tuple[int, str]:
    """torch's intra-op threads for this run, and why.

    An OpenMP team of t threads waits at every barrier for its slowest thread; when another
    process keeps a core busy, a thread of the team is descheduled and every barrier waits
    for it (measured on 2 cores with two other jobs running: 12.9 s per round with 2 threads
    against 0.57 s with 1). So by default the run takes only the cores that the 1-minute
    load average leaves free (at least 1, at most torch's current setting, which a sweep
    worker has already set to 1)."""
    if requested:
        return requested, "engine.threads"
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    free = max(1, cores - math.ceil(load - 0.25))
    n = max(1, min(torch.get_num_threads(), free))
    return n, f"auto: load {load:.1f} on {cores} cores"


def global_test(cfg: Config, data: MultimodalDataset, agents: list[AgentSpec]) -> np.ndarray:
    """The global protocol's test samples: every agent's held-out samples, or a fixed,
    seeded, class-stratified subsample of them (`train.eval_global_samples`)."""
    full = global_test_indices(agents)
    n = cfg.train.eval_global_samples
    return stratified_subsample(full, data.labels, n, derive_seed(cfg.seed, 0xE7A1))


def global_validation(cfg: Config, data: MultimodalDataset, agents: list[AgentSpec]) -> np.ndarray:
    """The global protocol's validation samples: every agent's validation split, capped as
    the global test set is (`train.eval_global_samples`), with a seed of its own."""
    full = np.sort(np.concatenate([a.val_idx for a in agents]))
    n = cfg.train.eval_global_samples
    return stratified_subsample(full, data.labels, n, derive_seed(cfg.seed, 0x7A1D))


def build_setup(cfg: Config) -> Setup:
    """Load and partition the data and pick the method and topology (no models yet)."""
    threads, why = choose_threads(cfg.engine.threads)
    torch.set_num_threads(threads)
    device = resolve_device(cfg.engine.device)  # first: it is cheap, loading data is not
    data = load_dataset(cfg.data)
    agents = partition(data, cfg)
    _check_batch_size(cfg, agents)
    # through the registry: engines never import the methods (the registry loads them now)
    method: Method = registry.resolve("method", cfg.method.name, "method.name")(cfg, data)
    if cfg.partition.select_from == "validation" and method.local_candidates() <= 1:
        warnings.warn(
            f"partition.select_from=validation: method '{cfg.method.name}' makes no choice "
            "to score there (only choices such as parse-plus's method.plus_private do)",
            RuntimeWarning,
            stacklevel=2,
        )
    if cfg.partition.select_fraction > 0 and method.local_candidates() <= 1:
        warnings.warn(
            f"partition.select_fraction={cfg.partition.select_fraction} holds out training "
            f"samples that method '{cfg.method.name}' never uses (only choices such as "
            "parse-plus's method.plus_private read them): its agents just train on fewer",
            RuntimeWarning,
            stacklevel=2,
        )
    topology = Topology(method.topology_config(cfg.topology), len(agents), cfg.seed)
    topology.graph(1)  # an impossible graph (erdos-renyi p too small) stops the run here
    dtype = DTYPES[cfg.engine.dtype]
    x = {
        m: torch.from_numpy(v).to(device, dtype=dtype if v.dtype.kind == "f" else None)
        for m, v in data.modalities.items()
    }
    y = torch.from_numpy(data.labels.astype(np.int64)).to(device)
    validating = cfg.partition.val_fraction > 0
    pc = cfg.partition
    if pc.select_from == "validation":  # the config checked val_fraction > 0
        select = [torch.from_numpy(a.val_idx).to(device) for a in agents]
    elif pc.select_fraction > 0:
        select = [torch.from_numpy(a.select_idx).to(device) for a in agents]
    else:
        select = []
    return Setup(
        cfg=cfg,
        data=data,
        agents=agents,
        method=method,
        topology=topology,
        device=device,
        x=x,
        y=y,
        global_test=torch.from_numpy(global_test(cfg, data, agents)).to(device),
        train_idx=[torch.from_numpy(a.train_idx).to(device) for a in agents],
        test_idx=[torch.from_numpy(a.test_idx).to(device) for a in agents],
        threads=f"{threads} thread{'s' if threads > 1 else ''} ({why})",
        val_global=(
            torch.from_numpy(global_validation(cfg, data, agents)).to(device)
            if validating
            else None
        ),
        val_idx=[torch.from_numpy(a.val_idx).to(device) for a in agents] if validating else [],
        select_idx=select,
    )


def build_model(setup: Setup, agent: AgentSpec, device: torch.device | None = None) -> nn.Module:
    """One agent's model, initialised from its own seed: the same values in any process.
    On the `meta` device it has shapes only (what a process needs of others' agents).

    Initial values are drawn in float32 whatever `engine.dtype` says, so a float64 run
    starts from the float32 run's values (and the two can be compared)."""
    torch.manual_seed(setup.cfg.seed * 1_000_003 + agent.id)
    dtype = DTYPES[setup.cfg.engine.dtype]
    if device is not None and device.type == "meta":
        with device:
            return setup.method.build_model(agent).to(dtype)
    return setup.method.build_model(agent).to(device or setup.device, dtype=dtype)


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
