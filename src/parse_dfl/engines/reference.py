"""The reference engine: a plain loop over agents. It is the specification of a round.

Round t:
  1. every agent takes `local_steps` optimiser steps on its own mini-batches;
  2. for every holder group of every shared block, the holders' copies of the block are
     replaced by W_t @ (stacked copies), W_t the group's mixing matrix in round t.
Optimiser state (momentum, Adam moments) stays local.
"""

from __future__ import annotations

import torch
from torch import nn

from parse_dfl.engines.base import Engine
from parse_dfl.evaluation import accuracy


def make_optimizer(model: nn.Module, train_cfg) -> torch.optim.Optimizer:
    if train_cfg.optimizer == "adam":
        return torch.optim.Adam(
            model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay
        )
    return torch.optim.SGD(
        model.parameters(),
        lr=train_cfg.lr,
        momentum=train_cfg.momentum,
        weight_decay=train_cfg.weight_decay,
    )


class ReferenceEngine(Engine):
    name = "reference"

    def adopt(self, models: list[nn.Module]) -> None:
        self.models = models
        self.optimizers = [make_optimizer(m, self.setup.cfg.train) for m in models]
        self.params = [dict(m.named_parameters()) for m in models]

    def local_round(self, round_: int) -> float:
        s = self.setup
        batches = self.sampler.round(round_)
        losses = []
        for a, agent in enumerate(s.agents):
            model, opt = self.models[a], self.optimizers[a]
            model.train()
            for k in range(s.cfg.train.local_steps):
                idx = s.train_idx[a][batches[a, k].to(s.device)]
                x = {m: s.x[m][idx] for m in agent.modalities}
                opt.zero_grad(set_to_none=True)
                loss = s.method.loss(model, x, s.y[idx])
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
        return sum(losses) / max(1, len(losses))

    @torch.no_grad()
    def gossip(self, round_: int) -> None:
        for k, g in enumerate(self.groups):
            W, _ = self.schedule.mixing(k, round_)
            stacked = torch.stack(
                [torch.cat([self.params[a][n].reshape(-1) for n in g.params]) for a in g.holders]
            )
            mixed = torch.as_tensor(W.toarray(), dtype=stacked.dtype, device=stacked.device) @ stacked
            for row, a in enumerate(g.holders):
                offset = 0
                for n in g.params:
                    p = self.params[a][n]
                    p.copy_(mixed[row, offset : offset + p.numel()].view_as(p))
                    offset += p.numel()

    def evaluate(self) -> tuple[list[float], list[float]]:
        s = self.setup
        glob, loc = [], []
        for a, agent in enumerate(s.agents):
            glob.append(accuracy(s.method, self.models[a], agent.modalities, s.x, s.y, s.global_test))
            loc.append(accuracy(s.method, self.models[a], agent.modalities, s.x, s.y, s.test_idx[a]))
        return glob, loc
