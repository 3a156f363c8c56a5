"""The reference engine: a plain loop over agents. It is the specification of a round.

Round t:
  1. every agent takes `local_steps` optimiser steps on its own mini-batches;
  2. for every holder group of every shared block, the holders' copies of the block are
     replaced by W_t @ (stacked copies), W_t the group's mixing matrix in round t, after the
     checks of engines/receive.py (a non-finite block is dropped, its weight returned).
Optimiser state (momentum, Adam moments) stays local.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from parse_dfl.config import TrainConfig
from parse_dfl.engines.base import Engine
from parse_dfl.evaluation import accuracy
from parse_dfl.models.blocks import param_blocks


def make_optimizer(
    model: nn.Module, train_cfg: TrainConfig, lr_scale: dict[str, float] | None = None
) -> torch.optim.Optimizer:
    """The agent's optimiser; `lr_scale` (block -> factor) gives blocks their own rate."""
    scale = lr_scale or {}
    groups = [
        {
            "params": [dict(model.named_parameters())[n] for n in names],
            "lr": train_cfg.lr * scale.get(b, 1.0),
        }
        for b, names in param_blocks(model).items()
    ]
    if train_cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    return torch.optim.SGD(
        groups, lr=train_cfg.lr, momentum=train_cfg.momentum, weight_decay=train_cfg.weight_decay
    )


class ReferenceEngine(Engine):
    name = "reference"

    def adopt(self, models: list[nn.Module]) -> None:
        if not hasattr(self, "mine"):
            self.mine = list(range(len(models)))  # the agents this process trains
        self.models = models
        self.params = [dict(m.named_parameters()) for m in models]
        self._make_optimizers()

    def _make_optimizers(self) -> None:
        s = self.setup
        self.optimizers: list[torch.optim.Optimizer | None] = [None] * len(self.models)
        for a in self.mine:
            agent, model = s.agents[a], self.models[a]
            scale = {b: s.method.lr_scale(agent, b) for b in param_blocks(model)}
            self.optimizers[a] = make_optimizer(model, s.cfg.train, scale)

    def enter_stage(self, stage: int) -> None:
        s = self.setup
        s.method.enter_stage(stage, s.agents, self.models)
        self.regroup(self.models)
        self._make_optimizers()

    def state_dict(self) -> dict[str, Any]:
        return {
            "models": [m.state_dict() for m in self.models],
            "optimizers": [o.state_dict() for o in self.optimizers if o is not None],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for model, sd in zip(self.models, state["models"], strict=True):
            model.load_state_dict(sd)
        self._make_optimizers()
        for opt, sd in zip(self.optimizers, state["optimizers"], strict=True):
            assert opt is not None
            opt.load_state_dict(sd)

    def reset_local_state(self) -> None:
        """The models were replaced or reloaded: fresh optimisers."""
        self._make_optimizers()

    def optimizer_state(self, a: int) -> dict[str, Any]:
        opt = self.optimizers[a]
        assert opt is not None
        return opt.state_dict()

    def load_optimizer_state(self, a: int, osd: dict[str, Any]) -> None:
        opt = self.optimizers[a]
        assert opt is not None
        opt.load_state_dict(osd)

    def local_round(self, round_: int) -> float:
        losses = self.train_agents(round_)
        return sum(losses) / max(1, len(losses))

    def train_shard(self, round_: int) -> tuple[float, int]:
        """Local steps of this process's live agents: (sum of the steps' losses, steps)."""
        losses = self.train_agents(round_)
        return sum(losses), len(losses)

    def train_agents(self, round_: int) -> list[float]:
        """Local steps of this process's live agents; every step's training loss."""
        s = self.setup
        batches = self.sampler.round(round_)
        trains = self.faults.trains(round_)
        losses: list[float] = []
        for a in self.mine:
            agent = s.agents[a]
            if not trains[a]:
                continue  # crashed or straggling this round
            model, opt = self.models[a], self.optimizers[a]
            assert opt is not None
            model.train()
            for k in range(s.cfg.train.local_steps):
                idx = s.train_idx[a][batches[a, k].to(s.device)]
                x = {m: s.x[m][idx] for m in agent.modalities}
                opt.zero_grad(set_to_none=True)
                loss = s.method.loss(model, x, self.labels(a, s.y[idx]))
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
        return losses

    def block_rows(self, k: int) -> torch.Tensor:
        g = self.groups[k]
        return torch.stack(
            [
                torch.cat([self.params[a][n].detach().reshape(-1) for n in g.params])
                for a in g.holders
            ]
        )

    def agent_models(self) -> list[nn.Module]:
        return self.models

    @torch.no_grad()
    def gossip(self, round_: int) -> None:
        for k, g in enumerate(self.groups):
            mixed = self.receive_group(k, round_, self.block_rows(k))
            for row, a in enumerate(g.holders):
                offset = 0
                for n in g.params:
                    p = self.params[a][n]
                    p.copy_(mixed[row, offset : offset + p.numel()].view_as(p))
                    offset += p.numel()

    def evaluate(self) -> tuple[list[float], list[float]]:
        """(global, local) test accuracy of this process's agents (0 for any other's)."""
        s = self.setup
        glob, loc = [0.0] * len(s.agents), [0.0] * len(s.agents)
        for a in self.mine:
            agent, model = s.agents[a], self.models[a]
            glob[a] = accuracy(s.method, model, agent.modalities, s.x, s.y, s.global_test)
            loc[a] = accuracy(
                s.method, model, agent.modalities, s.x, s.y, s.test_idx[a], local=True
            )
        return glob, loc
