"""The batched engine: the reference engine's round, computed cohort by cohort.

Cohorts (engines/cohort.py): agents whose models have the same structure and who feed them
the same modalities; their parameters are stacked along a leading agent axis and each
agent's nn.Module shows its row (no second copy).

Local steps: one `torch.func.vmap(grad_and_value(...))` call per chunk of a cohort and step.
The function under vmap is the method's own `loss(model, x, y)`, called on the cohort's
template model with one agent's parameters swapped in (`functional_call`), so a method needs
no knowledge of the engine. Mini-batches are one gather from a padded (n_agents, max_train)
table of training indices. The optimisers (Adam, SGD with momentum and weight decay, per-block
learning rates from `method.lr_scale`) (engines/stacked_optimizer.py) are written out on the
stacked tensors and repeat torch.optim's arithmetic. torch.optim skips a parameter whose .grad is
None (not reached by the loss, e.g. a head not used in the current stage) while vmap would
hand it a zero gradient; the engine therefore asks autograd once per stage and cohort which
parameters the loss reaches and updates only those.

Gossip (engines/cohort_gossip.py): one product with the round's W per holder group, through
the receive path every engine uses (engines/receive.py).

Evaluation (engines/cohort_evaluation.py): vmap of `method.logits` over a chunk of agents and
a chunk of test samples.

Safety: before a cohort's first batched step in a stage, the engine compares the vmapped
loss and gradients of its first agents with plain autograd on their own modules. If vmap
fails (random ops, in-place buffer updates, data-dependent Python control flow) or the
results disagree, the cohort falls back to the reference's per-agent path (its own modules,
autograd, the same optimiser arithmetic) and a warning says why; evaluation is checked the
same way. The maths is never changed silently.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from parse_dfl.engines.base import Engine
from parse_dfl.engines.cohort import Cohort, ModelCall, Rows, structure_key
from parse_dfl.engines.cohort_evaluation import CohortEvaluation
from parse_dfl.engines.cohort_gossip import CohortGossip
from parse_dfl.engines.reference import make_optimizer
from parse_dfl.engines.stacked_optimizer import StackedOptimizer
from parse_dfl.models.blocks import param_blocks

__all__ = ["BatchedEngine", "Cohort", "StackedOptimizer", "structure_key"]


# --- the engine ---------------------------------------------------------------------------


class BatchedEngine(CohortGossip, CohortEvaluation, Engine):
    name = "batched"

    # Working-set budget of one chunk of a cohort (activations + gradients + optimiser
    # temporaries); a cohort is run in chunks of at most this many bytes per step.
    chunk_bytes: int = 192 << 20
    # ... and its largest single tensor (a gradient, an activation) at most this many bytes:
    # glibc malloc serves blocks over 32 MiB with a fresh mmap on every allocation, and on a
    # VM the page faults of that can cost as much as the arithmetic.
    tensor_bytes: int = 30 << 20
    max_chunk: int | None = None  # cap on agents per chunk (None: from chunk_bytes)
    force_fallback: bool = False  # run every cohort on the per-agent path (for tests)

    # --- building -------------------------------------------------------------------------

    def adopt(self, models: list[nn.Module]) -> None:
        if not hasattr(self, "mine"):
            self.mine = list(range(len(models)))  # the agents this process trains
        self.models = models
        s = self.setup
        n = len(s.agents)
        sizes = [len(t) for t in s.train_idx]
        self.train_table = torch.zeros((n, max(sizes)), dtype=torch.long, device=s.device)
        for a, idx in enumerate(s.train_idx):
            self.train_table[a, : len(idx)] = idx
        tsizes = [len(t) for t in s.test_idx]
        self.test_len = torch.tensor(tsizes, dtype=torch.long, device=s.device)
        self.test_table = torch.zeros((n, max(tsizes)), dtype=torch.long, device=s.device)
        for a, idx in enumerate(s.test_idx):
            self.test_table[a, : len(idx)] = idx
        self._restack()

    def _restack(self) -> None:
        """(Re)build the cohorts from this process's agents' modules, fresh optimisers and
        group plans."""
        s = self.setup
        by_key: dict[tuple, list[int]] = {}
        for a in self.mine:
            key = structure_key(self.models[a], s.agents[a].modalities)
            by_key.setdefault(key, []).append(a)
        self.cohorts: list[Cohort] = []
        self.where = np.full((len(s.agents), 2), -1, dtype=np.int64)  # agent -> (cohort, row)
        for ci, ids in enumerate(by_key.values()):
            self.cohorts.append(self._stack(ids))
            for r, a in enumerate(ids):
                self.where[a] = (ci, r)
        self.params = [dict(m.named_parameters()) for m in self.models]
        self._replan()

    def regroup(self, models: list[nn.Module]) -> None:
        super().regroup(models)
        if getattr(self, "cohorts", None) is not None:
            self._replan()

    def _stack(self, ids: list[int]) -> Cohort:
        s = self.setup
        template = self.models[ids[0]]
        names = [n for n, _ in template.named_parameters()]
        own = [dict(self.models[a].named_parameters()) for a in ids]
        bufs = [dict(self.models[a].named_buffers()) for a in ids]
        with torch.no_grad():
            P = {n: torch.stack([d[n].detach() for d in own]) for n in names}
            B = {n: torch.stack([d[n].detach() for d in bufs]) for n in bufs[0]}
        for r, a in enumerate(ids):  # the modules now show (and write) the stacked rows
            for n, p in self.models[a].named_parameters():
                p.data = P[n][r]
            for n, b in self.models[a].named_buffers():
                b.data = B[n][r]
        block_of = {p: b for b, ps in param_blocks(template).items() for p in ps}
        lr = {n: np.empty(len(ids), dtype=np.float64) for n in names}
        for r, a in enumerate(ids):
            scale = {b: s.method.lr_scale(s.agents[a], b) for b in param_blocks(self.models[a])}
            for n in names:  # the reference's `train_cfg.lr * scale.get(b, 1.0)`
                lr[n][r] = s.cfg.train.lr * scale.get(block_of[n], 1.0)
        c = Cohort(
            ids=ids,
            ids_t=torch.tensor(ids, dtype=torch.long, device=s.device),
            modalities=s.agents[ids[0]].modalities,
            template=template,
            names=names,
            P=P,
            B=B,
            lr=lr,
        )
        largest = max([1] + [p[0].numel() * p.element_size() for p in P.values()])
        c.chunk = max(1, min(c.n, self.tensor_bytes // largest))  # until the probe sizes it
        c.opt = StackedOptimizer(P, lr, s.cfg.train)
        c.loss_fn = ModelCall(s.method, template, "loss")
        c.logits_fn = ModelCall(s.method, template, "logits")
        c.local_logits_fn = ModelCall(s.method, template, "local_logits")
        return c

    def enter_stage(self, stage: int) -> None:
        s = self.setup
        s.method.enter_stage(stage, s.agents, self.models)
        self._restack()  # the method may have changed the models; fresh optimiser state
        self.regroup(self.models)

    # --- local steps ----------------------------------------------------------------------

    def _batch(self, c: Cohort, idx: torch.Tensor, agents: Any) -> tuple[dict, torch.Tensor]:
        """Inputs and labels of sample indices `idx` ((B,) for one agent, (n, B) for the
        agents `agents`), with label-flip attackers' labels flipped as `Engine.labels` does."""
        s = self.setup
        flat = idx.reshape(-1)
        x = {
            m: s.x[m].index_select(0, flat).view(*idx.shape, *s.x[m].shape[1:])
            for m in c.modalities
        }
        y = s.y.index_select(0, flat).view(idx.shape)
        if idx.dim() == 1:
            return x, self.labels(int(agents), y)
        if s.cfg.attack.kind == "label-flip":
            bad = torch.as_tensor(self.attackers[np.asarray(agents)], device=y.device)
            if bool(bad.any()):
                y = torch.where(bad[:, None], s.data.n_classes - 1 - y, y)
        return x, y

    def _probe(self, c: Cohort, batch: torch.Tensor) -> None:
        """Decide batched vs per-agent for this cohort and stage; find the parameters that
        the loss reaches; size the chunks. `batch`: (n, B) sample indices of the first step."""
        k = min(2, c.n)
        saved = [0, 0]  # bytes of the tensors autograd keeps for backward: total, largest

        def pack(t: torch.Tensor) -> torch.Tensor:
            size = t.numel() * t.element_size()
            saved[0] += size
            saved[1] = max(saved[1], size)
            return t

        ref_grads: list[dict[str, torch.Tensor]] = []
        ref_loss: list[float] = []
        used_sets: list[list[str]] = []
        with self._rng_untouched():
            self._probe_reference(c, batch, k, pack, ref_grads, ref_loss, used_sets)
        c.used = used_sets[0]
        act = saved[0] / k
        c.sample_bytes = act / max(1, batch.shape[-1])
        per_agent = act + 3 * c.param_bytes()
        largest = max([saved[1]] + [p[0].numel() * p.element_size() for p in c.P.values()])
        c.chunk = int(
            max(1, min(c.n, self.chunk_bytes // max(1.0, per_agent), self.tensor_bytes // largest))
        )
        if self.max_chunk:
            c.chunk = min(c.chunk, self.max_chunk)
        if self.force_fallback:
            c.mode = "fallback"
            return
        if any(u != c.used for u in used_sets):
            self._fall_back(c, "agents of one cohort differ in which parameters the loss reaches")
            return
        used = set(c.used)
        other = [n for n in c.names if n not in used]

        def loss_of(train: dict, rest: dict, x: dict, y: torch.Tensor) -> torch.Tensor:
            assert c.loss_fn is not None
            return functional_call(c.loss_fn, (train, rest), (x, y))

        c.grad_fn = vmap(grad_and_value(loss_of), randomness="error")
        c.other = other
        try:
            with self._rng_untouched():
                grads, losses = self._vmapped(c, slice(0, k), batch[:k])
        except Exception as e:  # noqa: BLE001 - any failure means: not batchable
            self._fall_back(c, f"vmap failed ({type(e).__name__}: {e})")
            return
        for r in range(k):
            num = math.fsum(
                float((grads[n][r] - ref_grads[r][n]).double().square().sum()) for n in used
            )
            den = math.fsum(float(ref_grads[r][n].double().square().sum()) for n in used)
            ok = math.isfinite(num) and math.sqrt(num) <= 1e-4 * math.sqrt(den) + 1e-6
            ok = ok and abs(float(losses[r]) - ref_loss[r]) <= 1e-4 * (abs(ref_loss[r]) + 1e-3)
            if not ok:
                self._fall_back(c, "vmapped loss/gradients differ from the agent's own autograd")
                return
        c.mode = "batched"

    def _rng_untouched(self) -> Any:
        """A context that restores the random state: probes must not shift the random
        numbers the per-agent path draws (dropout, say) away from the reference's."""
        dev = self.setup.device
        return torch.random.fork_rng(devices=[dev] if dev.type != "cpu" else [])

    def _probe_reference(
        self,
        c: Cohort,
        batch: torch.Tensor,
        k: int,
        pack: Any,
        ref_grads: list,
        ref_loss: list,
        used_sets: list,
    ) -> None:
        s = self.setup
        for r in range(k):
            model = self.models[c.ids[r]]
            model.train()
            x, y = self._batch(c, batch[r], c.ids[r])
            params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = s.method.loss(model, x, y)
            grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
            used_sets.append([n for (n, _), g in zip(params, grads, strict=True) if g is not None])
            ref_grads.append(
                {n: g for (n, _), g in zip(params, grads, strict=True) if g is not None}
            )
            ref_loss.append(float(loss.detach()))

    def _fall_back(self, c: Cohort, why: str) -> None:
        c.mode = "fallback"
        warnings.warn(
            f"batched engine: agents {c.ids[:3]}{'...' if c.n > 3 else ''} "
            f"({'+'.join(c.modalities)}, {type(c.template).__name__}) run per agent: {why}",
            RuntimeWarning,
            stacklevel=3,
        )

    def _vmapped(
        self, c: Cohort, rows: Rows, idx: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Per-agent gradients of the used parameters and losses for cohort rows `rows`."""
        ids = np.asarray(c.ids)[rows if isinstance(rows, slice) else rows.cpu().numpy()]
        x, y = self._batch(c, idx, ids)
        train = {f"model.{n}": c.P[n][rows] for n in c.used}
        rest = {f"model.{n}": c.P[n][rows] for n in c.other}
        rest |= {f"model.{n}": b[rows] for n, b in c.B.items()}
        c.template.train()
        grads, losses = c.grad_fn(train, rest, x, y)
        return {n[len("model.") :]: g for n, g in grads.items()}, losses

    def reset_local_state(self) -> None:
        """The models were replaced or reloaded: restack them, fresh optimiser state."""
        self._restack()

    def local_round(self, round_: int) -> float:
        total, count = self.train_shard(round_)
        return total / max(1, count)

    def train_shard(self, round_: int) -> tuple[float, int]:
        """Local steps of this process's live agents: (sum of the steps' losses, steps)."""
        s = self.setup
        steps = s.cfg.train.local_steps
        if steps == 0:
            return 0.0, 0
        n = len(s.agents)
        trains = self.faults.trains(round_)
        pos = self.sampler.round(round_).to(s.device)
        batch = self.train_table.gather(1, pos.view(n, -1)).view(n, steps, -1)
        total = torch.zeros((), dtype=torch.float64, device=s.device)
        count = 0
        fallback: list[int] = []
        for c in self.cohorts:
            active = np.flatnonzero(trains[c.ids])  # cohort rows that train this round
            if len(active) == 0:
                continue
            if c.mode == "unprobed":
                self._probe(c, batch[c.ids_t, 0])
            if c.mode == "fallback":
                fallback.extend(c.ids[r] for r in active)
                continue
            for lo in range(0, len(active), c.chunk):
                rows = self._rows(active[lo : lo + c.chunk])
                idx = batch[c.ids_t[rows]]
                for k in range(steps):
                    grads, losses = self._vmapped(c, rows, idx[:, k])
                    assert c.opt is not None
                    c.opt.step(rows, grads)
                    total += losses.detach().sum(dtype=torch.float64)
                    count += losses.shape[0]
        # Per-agent path, in agent order (as the reference draws random numbers, if any).
        losses_pa: list[float] = []
        for a in sorted(fallback):
            ci, r = (int(v) for v in self.where[a])
            c = self.cohorts[ci]
            model = self.models[a]
            model.train()
            params = list(model.named_parameters())
            for k in range(steps):
                x, y = self._batch(c, batch[a, k], a)
                for _, p in params:
                    p.grad = None
                loss = s.method.loss(model, x, y)
                loss.backward()
                grads = {nm: p.grad.unsqueeze(0) for nm, p in params if p.grad is not None}
                assert c.opt is not None
                c.opt.step(slice(r, r + 1), grads)
                for _, p in params:
                    p.grad = None
                losses_pa.append(float(loss.detach()))
        return float(total) + sum(losses_pa), count + len(losses_pa)

    def _rows(self, rows: np.ndarray) -> Rows:
        """Cohort rows as a slice when contiguous (views, no copies), else an index tensor."""
        if rows[-1] - rows[0] + 1 == len(rows):
            return slice(int(rows[0]), int(rows[-1]) + 1)
        return torch.as_tensor(rows, dtype=torch.long, device=self.setup.device)

    # --- checkpoints ----------------------------------------------------------------------
    # The same layout as the reference engine's (per-agent model state dicts and torch.optim
    # state dicts), so a checkpoint written by one engine resumes on the other.

    def _optimizer_order(self, a: int) -> list[str]:
        """Parameter names in the order of the reference's optimiser (blocks, then names)."""
        return [n for names in param_blocks(self.models[a]).values() for n in names]

    def optimizer_state(self, a: int) -> dict[str, Any]:
        """Agent `a`'s optimiser state as torch.optim's state_dict would hold it."""
        s = self.setup
        train = s.cfg.train
        ci, r = (int(v) for v in self.where[a])
        c = self.cohorts[ci]
        assert c.opt is not None
        state: dict[int, dict[str, Any]] = {}
        for i, n in enumerate(self._optimizer_order(a)):
            steps = int(c.opt.steps[n][r])
            if steps == 0:
                continue
            st = c.opt._state(n)
            if train.optimizer == "adam":
                state[i] = {
                    "step": torch.tensor(float(steps)),
                    "exp_avg": st[0][r].detach(),
                    "exp_avg_sq": st[1][r].detach(),
                }
            elif train.momentum != 0:
                state[i] = {"momentum_buffer": st[0][r].detach()}
        model = self.models[a]
        scale = {b: s.method.lr_scale(s.agents[a], b) for b in param_blocks(model)}
        groups = make_optimizer(model, train, scale).state_dict()["param_groups"]
        return {"state": state, "param_groups": groups}

    def load_optimizer_state(self, a: int, osd: dict[str, Any]) -> None:
        """Agent `a`'s optimiser state from torch.optim's state_dict form."""
        adam = self.setup.cfg.train.optimizer == "adam"
        ci, r = (int(v) for v in self.where[a])
        c = self.cohorts[ci]
        assert c.opt is not None
        order = self._optimizer_order(a)
        for i, st in osd["state"].items():
            n = order[int(i)]
            if adam:
                c.opt.steps[n][r] = int(float(st["step"]))
                m, v = c.opt._state(n)
                m[r].copy_(st["exp_avg"])
                v[r].copy_(st["exp_avg_sq"])
            elif st.get("momentum_buffer") is not None:
                c.opt.steps[n][r] = max(1, int(c.opt.steps[n][r]))
                c.opt._state(n)[0][r].copy_(st["momentum_buffer"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "models": [m.state_dict() for m in self.models],
            "optimizers": [self.optimizer_state(a) for a in range(len(self.models))],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restack()
        with torch.no_grad():
            for model, sd in zip(self.models, state["models"], strict=True):
                model.load_state_dict(sd)
        for a, osd in enumerate(state["optimizers"]):
            self.load_optimizer_state(a, osd)

    # --- access ---------------------------------------------------------------------------

    def agent_models(self) -> list[nn.Module]:
        return self.models

    def parameters_of(self, agent_id: int) -> dict[str, torch.Tensor]:
        """A copy of one agent's current parameters (name -> tensor)."""
        ci, r = self.where[agent_id]
        c = self.cohorts[ci]
        return {n: c.P[n][r].detach().clone() for n in c.names}

    def describe_cohorts(self) -> list[dict[str, Any]]:
        """Cohorts as run: agents, modalities, path (batched / per agent) and chunk size."""
        return [
            {
                "agents": len(c.ids),
                "modalities": "+".join(c.modalities),
                "model": type(c.template).__name__,
                "mode": c.mode,
                "eval_mode": c.eval_mode,
                "chunk": c.chunk,
                "param_bytes_per_agent": c.param_bytes(),
            }
            for c in self.cohorts
        ]
