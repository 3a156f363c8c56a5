"""The round loop every engine shares: local steps, gossip, evaluation, progress, history.

An engine supplies the three steps; the loop, the schedule of evaluations and the record of
what happened are the same for all engines, so their results.json files are comparable.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from parse_dfl.engines.gossip import GossipSchedule
from parse_dfl.engines.sampling import BatchSampler
from parse_dfl.engines.setup import Setup, build_models, common_init, holder_groups
from parse_dfl.evaluation import by_type, update_conflict


@dataclass
class EngineResult:
    test_accuracy: list[float]
    local_test_accuracy: list[float]
    bytes_sent: np.ndarray
    history: list[dict[str, Any]]
    holder_graphs: dict[str, dict[str, int]]
    wall_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(ABC):
    name: str = ""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        cfg = setup.cfg
        models = build_models(setup)
        self.groups = holder_groups(setup, models)
        if cfg.method.common_init:
            common_init(models, self.groups)
        self.schedule = GossipSchedule(setup.topology, self.groups, cfg.topology.mixing)
        self.sampler = BatchSampler(
            [len(a.train_idx) for a in setup.agents],
            cfg.train.batch_size,
            cfg.train.local_steps,
            cfg.seed,
        )
        self.adopt(models)

    @abstractmethod
    def adopt(self, models: list) -> None:
        """Take ownership of the freshly built, commonly initialised models."""

    @abstractmethod
    def enter_stage(self, stage: int) -> None:
        """A multi-stage method moves on: hand it the models, then regroup and re-optimise."""

    @abstractmethod
    def local_round(self, round_: int) -> float:
        """Every agent takes its local steps; returns the mean training loss."""

    @abstractmethod
    def gossip(self, round_: int) -> None:
        """Every shared block is mixed among its holders with this round's matrix."""

    @abstractmethod
    def evaluate(self) -> tuple[list[float], list[float]]:
        """(global, local) test accuracy of every agent."""

    @abstractmethod
    def block_rows(self, k: int) -> torch.Tensor:
        """The holders' current copies of group k's block, flattened: (holders, numel)."""

    @abstractmethod
    def agent_models(self) -> list[nn.Module]:
        """Every agent's model as a plain nn.Module (for saving and diagnostics)."""

    def conflicts(self, before: dict[int, torch.Tensor]) -> dict[str, float]:
        """Gradient conflict per shared block: mean cosine between the local updates of its
        unimodal and its multimodal holders (negative = they pull the block apart)."""
        agents = self.setup.agents
        out: dict[str, float] = {}
        for k, rows in before.items():
            g = self.groups[k]
            multi = torch.tensor([len(agents[a].modalities) > 1 for a in g.holders])
            if multi.all() or not multi.any():
                continue
            delta = self.block_rows(k) - rows
            out[g.label] = update_conflict(delta[~multi], delta[multi])
        return out

    def run(self, progress: bool = True) -> EngineResult:
        setup, cfg = self.setup, self.setup.cfg
        agents, mods = setup.agents, list(setup.data.modalities)
        sent = np.zeros(len(agents), dtype=np.int64)
        history: list[dict[str, Any]] = []
        start = time.perf_counter()
        acc: tuple[list[float], list[float]] = ([], [])
        bar = tqdm(
            range(1, cfg.train.rounds + 1),
            desc=f"{cfg.method.name}",
            disable=not progress,
            unit="round",
            leave=False,
        )
        stage = 0
        for t in bar:
            if setup.method.stage_of(t) != stage:
                stage = setup.method.stage_of(t)
                self.enter_stage(stage)
            evaluating = t % cfg.train.eval_every == 0 or t == cfg.train.rounds
            before = (
                {k: self.block_rows(k).clone() for k in range(len(self.groups))}
                if evaluating
                else {}
            )
            loss = self.local_round(t)
            conflict = self.conflicts(before) if evaluating else {}
            self.gossip(t)
            sent += self.schedule.bytes_sent(t, len(agents))
            if evaluating:
                acc = self.evaluate()
                history.append(
                    {
                        "round": t,
                        "train_loss": loss,
                        "mean_accuracy": float(np.mean(acc[0])),
                        "mean_local_accuracy": float(np.mean(acc[1])),
                        "by_type": by_type(agents, acc[0], mods),
                        "by_type_local": by_type(agents, acc[1], mods),
                        "bytes_sent": int(sent.sum()),
                        "seconds": time.perf_counter() - start,
                        "conflict": conflict,
                    }
                )
                bar.set_postfix(loss=f"{loss:.3f}", acc=f"{np.mean(acc[0]):.3f}")
        bar.close()
        return EngineResult(
            test_accuracy=acc[0],
            local_test_accuracy=acc[1],
            bytes_sent=sent,
            history=history,
            holder_graphs=self.schedule.describe(),
            wall_seconds=time.perf_counter() - start,
        )
