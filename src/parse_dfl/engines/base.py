"""The round loop every engine shares: local steps, gossip, evaluation, progress, history,
faults and checkpoints.

An engine supplies the steps; the loop, the schedule of evaluations, the record of what
happened and the checkpoints are the same for all engines, so their results are comparable.
"""

from __future__ import annotations

import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from parse_dfl.engines.faults import FaultPlan
from parse_dfl.engines.gossip import GossipSchedule
from parse_dfl.engines.receive import Matmul, dense_matmul, receive
from parse_dfl.engines.robust import attackers, corrupt, trim_is_void
from parse_dfl.engines.sampling import BatchSampler
from parse_dfl.engines.setup import Setup, build_models, common_init, holder_groups
from parse_dfl.errors import UserError
from parse_dfl.evaluation import by_type, update_conflict
from parse_dfl.graph.topology import derive_seed

CHECKPOINT = "checkpoint.pt"


@dataclass
class EngineResult:
    test_accuracy: list[float]
    local_test_accuracy: list[float]
    bytes_sent: np.ndarray
    history: list[dict[str, Any]]
    holder_graphs: dict[str, dict[str, int]]
    wall_seconds: float
    live_rounds: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)
    # (global, local) validation accuracy of every agent; None without a validation split
    val_accuracy: list[float] | None = None
    val_local_accuracy: list[float] | None = None


class Engine(ABC):
    name: str = ""
    on_eval: Callable[[list[dict[str, Any]]], None] | None = None
    """Called with the history so far: once before the first round (on resume, the
    checkpoint's) and after every evaluation; experiments/metrics.py writes metrics.csv."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        cfg = setup.cfg
        self.faults = FaultPlan(cfg.faults, len(setup.agents), cfg.seed)
        self.attackers = attackers(cfg.attack, len(setup.agents), cfg.seed)
        self.plain_gossip = cfg.attack.kind in ("none", "label-flip") and cfg.robust.rule == "mean"
        self.dropped = 0
        self.stage = 0
        models = self.initial_models()
        self.sampler = BatchSampler(
            [len(a.train_idx) for a in setup.agents],
            cfg.train.batch_size,
            cfg.train.local_steps,
            cfg.seed,
        )
        self.adopt(models)

    def initial_models(self) -> list[nn.Module]:
        """Every agent's model, seeded per agent, with shared blocks commonly initialised;
        sets the holder groups."""
        models = build_models(self.setup)
        self.regroup(models)
        if self.setup.cfg.method.common_init:
            common_init(models, self.groups)
        return models

    def plan_models(self) -> list[nn.Module]:
        """Models whose structure the share plan is asked about (no values needed)."""
        return self.agent_models()

    @property
    def writes_output(self) -> bool:
        """Whether this process writes the run folder (one process of a distributed run)."""
        return True

    def regroup(self, models: list[nn.Module]) -> None:
        """Ask the method's share plan again: holder groups and their gossip schedule."""
        s = self.setup
        self.groups = holder_groups(s, models)
        self.schedule = GossipSchedule(s.topology, self.groups, s.cfg.topology.mixing, self.faults)
        self._warn_fragments()
        robust = s.cfg.robust
        if robust.rule == "trimmed-mean" and any(
            trim_is_void(robust, self.schedule.mixing(k, 1)[1]) for k in range(len(self.groups))
        ):
            warnings.warn(
                f"robust.trim={robust.trim} trims nothing for holders with few neighbours "
                f"(int(trim x (neighbours + 1)) = 0): trimmed-mean is the plain mean for them; "
                f"raise robust.trim or use a denser graph",
                RuntimeWarning,
                stacklevel=2,
            )

    def _warn_fragments(self) -> None:
        """Say when a block's holders cannot agree: on a fixed graph, a holder graph in several
        components averages each component apart for the whole run (on a ring, the induced
        holder graph of a modality's encoder typically falls into 6-8 pieces); so does a
        crash that cuts the live holders of a block apart."""
        crash = self.setup.cfg.faults.crash_fraction > 0
        if not self.writes_output or not (crash or self.schedule.static):  # one process says it
            return
        described = self.schedule.describe()
        if crash:
            cut = {
                label: d["live_components"]
                for label, d in described.items()
                if d["live_components"] > 1
            }
            if cut:
                shown = ", ".join(f"{b} {n}" for b, n in list(cut.items())[:4])
                more = f" and {len(cut) - 4} more" if len(cut) > 4 else ""
                hint = (
                    "topology.holder_graph=overlay lets them re-link"
                    if self.setup.cfg.faults.relink
                    else "faults.relink=true re-links the live holders"
                )
                warnings.warn(
                    f"the crash cuts the live holders of {len(cut)} block(s) into pieces "
                    f"(components: {shown}{more}); each piece averages on its own while the "
                    f"agents are down. {hint}",
                    RuntimeWarning,
                    stacklevel=3,
                )
        if not self.schedule.static:
            return
        split = {label: d["components"] for label, d in described.items() if d["components"] > 1}
        if split:
            shown = ", ".join(f"{b} {n}" for b, n in list(split.items())[:4])
            more = f" and {len(split) - 4} more" if len(split) > 4 else ""
            warnings.warn(
                f"{len(split)} block(s) have holders in disconnected groups on "
                f"topology.holder_graph={self.setup.cfg.topology.holder_graph} (components: "
                f"{shown}{more}); each group averages on its own. "
                f"topology.holder_graph=overlay links every block's holders",
                RuntimeWarning,
                stacklevel=3,
            )

    @abstractmethod
    def adopt(self, models: list[nn.Module]) -> None:
        """Take ownership of the freshly built, commonly initialised models."""

    @abstractmethod
    def enter_stage(self, stage: int) -> None:
        """A multi-stage method moves on: hand it the models, then regroup and re-optimise."""

    @abstractmethod
    def local_round(self, round_: int) -> float:
        """Every agent in `self.faults.trains(round_)` takes its local steps; returns the
        mean training loss."""

    @abstractmethod
    def gossip(self, round_: int) -> None:
        """Every shared block is mixed among its holders with this round's matrix."""

    @abstractmethod
    def evaluate(self) -> tuple[list[float], list[float]]:
        """(global, local) test accuracy of every agent."""

    def evaluate_validation(self) -> tuple[list[float], list[float]]:
        """(global, local) validation accuracy of every agent: `evaluate` with the setup's
        validation sets in the place of its test sets, so that every engine measures
        validation exactly as it measures test (and none needs code of its own for it)."""
        s = self.setup
        assert s.val_global is not None
        return self._evaluate_on(s.val_global, s.val_idx)

    def _evaluate_on(
        self, global_idx: torch.Tensor, own_idx: list[torch.Tensor]
    ) -> tuple[list[float], list[float]]:
        """`evaluate` with other samples in the place of the test sets (then put back)."""
        s = self.setup
        saved = s.global_test, s.test_idx
        s.global_test, s.test_idx = global_idx, own_idx
        self.evaluation_sets_changed()
        try:
            return self.evaluate()
        finally:
            s.global_test, s.test_idx = saved
            self.evaluation_sets_changed()

    def choose_local(self) -> list[int] | None:
        """Each agent's local-protocol predictor, chosen by the method (`Method.pick_local`)
        from every candidate's correct predictions on each agent's own held-out samples
        (partition.select_fraction or, with partition.select_from: validation, its validation
        samples), or fixed by the configuration (`Method.fixed_local`). None when there is
        nothing to choose. Only the local
        protocol is read (the global part is scored on one sample and ignored)."""
        s = self.setup
        n_candidates = s.method.local_candidates()
        models: list[nn.Module] = self.models  # type: ignore[attr-defined]  # every engine's
        fixed = s.method.fixed_local(s.agents) if n_candidates > 1 else None
        if fixed is not None:
            for a, model in enumerate(models):
                s.method.choose_local(model, fixed[a])
            return fixed
        if n_candidates <= 1 or not s.select_idx:
            return None
        sizes = np.array([len(idx) for idx in s.select_idx])
        correct = []
        for k in range(n_candidates):
            for model in models:  # a distributed process's others are shapes only: no-op
                s.method.choose_local(model, k)
            acc = np.asarray(self._evaluate_on(s.select_idx[0][:1], s.select_idx)[1])
            correct.append(np.rint(acc * sizes))
        choice = s.method.pick_local(np.asarray(correct), sizes, s.agents)
        for a, model in enumerate(models):
            s.method.choose_local(model, choice[a])
        return choice

    def evaluation_sets_changed(self) -> None:
        """`setup.global_test` / `setup.test_idx` were swapped: an engine that keeps tables
        built from them rebuilds them here (the reference engine reads them afresh)."""
        return None

    @abstractmethod
    def block_rows(self, k: int) -> torch.Tensor:
        """The holders' current copies of group k's block, flattened: (holders, numel), as a
        fresh tensor (callers keep it across training steps)."""

    @abstractmethod
    def agent_models(self) -> list[nn.Module]:
        """Every agent's model as a plain nn.Module (for saving and diagnostics)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything that changes during training (parameters, optimiser state): tensors
        and plain containers only, so a checkpoint loads with weights_only=True."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` (the stage and holder groups are already restored)."""

    def labels(self, agent: int, y: torch.Tensor) -> torch.Tensor:
        """The labels an agent trains on: flipped (c -> C-1-c) for label-flip attackers."""
        if self.setup.cfg.attack.kind == "label-flip" and self.attackers[agent]:
            return self.setup.data.n_classes - 1 - y
        return y

    def sent(self, k: int, round_: int, rows: torch.Tensor) -> torch.Tensor:
        """What group k's holders send this round: their rows, corrupted by attackers (the
        same tensor when nobody lies)."""
        cfg = self.setup.cfg
        bad = torch.from_numpy(self.attackers[np.asarray(self.groups[k].holders)])
        return corrupt(rows, bad, cfg.attack, derive_seed(cfg.seed, round_, k))

    def receive_group(
        self,
        k: int,
        round_: int,
        rows: torch.Tensor,
        matmul: Matmul = dense_matmul,
        ok: np.ndarray | None = None,
    ) -> torch.Tensor:
        """One gossip step of group k over all its holders' rows: what they send, the checks,
        the rule (engines/receive.py); dropped messages are counted."""
        W, _ = self.schedule.mixing(k, round_)
        sent = self.sent(k, round_, rows)
        new, dropped = receive(
            rows, sent, W, self.setup.cfg.robust, ok=None if sent is not rows else ok, matmul=matmul
        )
        self.dropped += dropped
        return new

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

    # --- checkpoints --------------------------------------------------------------------
    def checkpoint_config(self) -> dict[str, Any]:
        """The config a checkpoint records and a resume must match, as plain containers (a
        checkpoint loads with weights_only=True): all of it but the engine, which may change
        on resume, except its number type, which changes the arithmetic, and the logging,
        which changes no number."""
        from parse_dfl.config import result_defining

        return result_defining(self.setup.cfg.model_dump(mode="json"))

    def save_checkpoint(self, path: Path, round_: int, loop: dict[str, Any]) -> None:
        """Atomically (parse_dfl.files): a kill at any moment leaves the last good checkpoint
        readable, and a full disk leaves no temporary file behind."""
        from parse_dfl.files import atomic_torch_save

        state = {
            "round": round_,
            "stage": self.stage,
            "engine": self.state_dict(),
            "method": self.setup.method.state_dict(),
            "loop": loop,
            "config": self.checkpoint_config(),
        }
        atomic_torch_save(path, state)

    def load_checkpoint(self, path: Path) -> tuple[int, dict[str, Any]]:
        """Restore a checkpoint; refuse one made with another config (the run folder's
        config.yaml was edited since), naming what differs. Old checkpoints carry no config."""
        try:
            state = torch.load(path, map_location=self.setup.device, weights_only=True)
        except Exception as e:  # a damaged file: say which, never execute anything from it
            raise UserError(str(path), f"unreadable checkpoint ({type(e).__name__})") from None

        from parse_dfl.config import Config

        def differences(old: Any, new: Any, default: Any, key: str = "") -> list[str]:
            """A key the checkpoint lacks was added to the config after it was written: it
            counts as that field's default (defaults keep earlier behaviour)."""
            if isinstance(old, dict) and isinstance(new, dict):
                keys = list(old) + [k for k in new if k not in old]
                dflt = default if isinstance(default, dict) else {}
                return [
                    d
                    for k in keys
                    for d in differences(
                        old.get(k, dflt.get(k)), new.get(k), dflt.get(k), f"{key}.{k}"
                    )
                ]
            same = old == new or (old != old and new != new)  # NaN, read back, equals NaN
            return [] if same else [f"{key.lstrip('.')}: {old!r} -> {new!r}"]

        if "config" in state:
            defaults = Config().model_dump(mode="json")
            diffs = differences(state["config"], self.checkpoint_config(), defaults)
            if diffs:
                more = f", and {len(diffs) - 3} more" if len(diffs) > 3 else ""
                raise UserError(
                    str(path.parent),
                    f"config.yaml no longer matches the checkpoint ({'; '.join(diffs[:3])}{more}); "
                    "restore it or start a new run",
                )
        self.setup.method.load_state_dict(state["method"])
        self.stage = int(state["stage"])
        if self.stage:
            self.regroup(self.plan_models())
        self.load_state_dict(state["engine"])
        return int(state["round"]), state["loop"]

    # --- the loop -----------------------------------------------------------------------
    def run(
        self, progress: bool = True, checkpoint_dir: Path | None = None, resume: bool = False
    ) -> EngineResult:
        setup, cfg = self.setup, self.setup.cfg
        agents, mods = setup.agents, list(setup.data.modalities)
        every = cfg.checkpoint.every
        ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
        loop: dict[str, Any] = {
            "sent": torch.zeros(len(agents), dtype=torch.int64),
            "live_rounds": torch.zeros(len(agents), dtype=torch.int64),
            "history": [],
            "acc": [[], []],
            "seconds": 0.0,
            "dropped": 0,
        }
        first = 1
        if resume and ckpt is not None and ckpt.is_file():
            done, loop = self.load_checkpoint(ckpt)
            self.dropped = int(loop["dropped"])
            first = done + 1
        if self.on_eval is not None:
            self.on_eval(loop["history"])
        start = time.perf_counter() - loop["seconds"]
        bar = tqdm(
            range(first, cfg.train.rounds + 1),
            desc=cfg.method.name,
            disable=not progress,
            unit="round",
            leave=False,
            initial=first - 1,
            total=cfg.train.rounds,
        )
        for t in bar:
            if setup.method.stage_of(t) != self.stage:
                self.stage = setup.method.stage_of(t)
                self.enter_stage(self.stage)
            evaluating = t % cfg.train.eval_every == 0 or t == cfg.train.rounds
            before = {k: self.block_rows(k) for k in range(len(self.groups))} if evaluating else {}
            loss = self.local_round(t)
            conflict = self.conflicts(before) if evaluating else {}
            self.gossip(t)
            loop["sent"] += torch.from_numpy(self.schedule.bytes_sent(t, len(agents)))
            loop["live_rounds"] += torch.from_numpy(self.faults.live(t).astype(np.int64))
            if evaluating:
                choice = self.choose_local()
                acc = self.evaluate()
                loop["acc"] = [list(acc[0]), list(acc[1])]
                entry: dict[str, Any] = {
                    "round": t,
                    "train_loss": loss,
                    "mean_accuracy": float(np.mean(acc[0])),
                    "mean_local_accuracy": float(np.mean(acc[1])),
                    "by_type": by_type(agents, acc[0], mods),
                    "by_type_local": by_type(agents, acc[1], mods),
                    "bytes_sent": int(loop["sent"].sum()),
                    "seconds": time.perf_counter() - start,
                    "conflict": conflict,
                }
                if choice is not None:  # how many agents use each local-protocol predictor
                    entry["local_choice"] = np.bincount(
                        choice, minlength=setup.method.local_candidates()
                    ).tolist()
                    loop["choice"] = choice
                if setup.val_global is not None:
                    val = self.evaluate_validation()
                    loop["val"] = [list(val[0]), list(val[1])]
                    entry["mean_val_accuracy"] = float(np.mean(val[0]))
                    entry["mean_val_local_accuracy"] = float(np.mean(val[1]))
                loop["history"].append(entry)
                if self.on_eval is not None:
                    self.on_eval(loop["history"])
                bar.set_postfix(loss=f"{loss:.3f}", acc=f"{np.mean(acc[0]):.3f}")
            if ckpt is not None and every and t % every == 0 and t < cfg.train.rounds:
                loop["seconds"] = time.perf_counter() - start
                loop["dropped"] = self.dropped
                self.save_checkpoint(ckpt, t, loop)
        bar.close()
        return EngineResult(
            test_accuracy=loop["acc"][0],
            local_test_accuracy=loop["acc"][1],
            bytes_sent=loop["sent"].numpy(),
            history=loop["history"],
            holder_graphs=self.schedule.describe(),
            wall_seconds=time.perf_counter() - start,
            live_rounds=loop["live_rounds"].numpy(),
            val_accuracy=loop["val"][0] if "val" in loop else None,
            val_local_accuracy=loop["val"][1] if "val" in loop else None,
            extra={
                "dropped_messages": self.dropped,
                "resumed_at_round": first if first > 1 else None,
                "local_choice": loop.get("choice"),
            },
        )
