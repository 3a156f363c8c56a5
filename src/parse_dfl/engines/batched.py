"""The batched engine: the reference engine's round, computed cohort by cohort.

Agents whose models have the same structure (class, module configuration, parameter names,
shapes and dtypes) and who feed it the same modalities form a *cohort*. A cohort keeps every
parameter stacked along a leading agent axis, (n_agents, *shape); each agent's nn.Module still
exists, its parameters are views of its row, so the modules always show the current values
(methods' stage hooks and `agent_models()` see them) and no second copy is held.

Local steps: one `torch.func.vmap(grad_and_value(...))` call per chunk of a cohort and step.
The function under vmap is the method's own `loss(model, x, y)`, called on the cohort's
template model with one agent's parameters swapped in (`functional_call`), so a method needs
no knowledge of the engine. Mini-batches are one gather from a padded (n_agents, max_train)
table of training indices. The optimisers (Adam, SGD with momentum and weight decay, per-block
learning rates from `method.lr_scale`) are written out on the stacked tensors and repeat
torch.optim's arithmetic operation by operation. torch.optim skips a parameter whose .grad is
None (not reached by the loss, e.g. a head not used in the current stage) while vmap would
hand it a zero gradient; the engine therefore asks autograd once per stage and cohort which
parameters the loss reaches and updates only those.

Gossip: per holder group, the holders' rows are gathered from their cohorts into one
(holders, numel) matrix and multiplied once by the round's mixing matrix: dense for small or
dense W, scipy CSR on the CPU otherwise (torch's CPU CSR product is several times slower),
torch CSR on other devices. When a group is exactly one whole cohort, each stacked parameter
is mixed in place without the gather. The checks and the combination are engines/receive.py's,
as in every engine: the holders' blocks are checked once per round (read in place), and a
non-finite one is dropped and its weight returned to the receivers.

Evaluation: vmap of `method.logits` over a chunk of agents and a chunk of test samples.

Safety: before a cohort's first batched step in a stage, the engine compares the vmapped
loss and gradients of its first agents with plain autograd on their own modules. If vmap
fails (random ops, in-place buffer updates, data-dependent Python control flow) or the
results disagree, the cohort falls back to the reference's per-agent path (its own modules,
autograd, the same optimiser arithmetic) and a warning says why; evaluation is checked the
same way. The maths is never changed silently.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from parse_dfl.config import TrainConfig
from parse_dfl.engines.base import Engine
from parse_dfl.engines.receive import combine, inbox, intact_parts
from parse_dfl.engines.reference import make_optimizer
from parse_dfl.evaluation import accuracy
from parse_dfl.models.blocks import param_blocks

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam defaults, as the reference engine uses them
ADAM_EPS = 1e-8

Rows = slice | torch.Tensor  # cohort rows: a range, or an index tensor (some agents idle)


# --- cohorts ------------------------------------------------------------------------------


def _freeze(value: Any) -> Any:
    """A hashable summary of a module attribute for the structure key."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (set, frozenset)):
        return tuple(sorted(repr(_freeze(v)) for v in value))
    if isinstance(value, torch.Tensor):
        small = tuple(value.detach().cpu().reshape(-1).tolist()) if value.numel() <= 64 else None
        return ("tensor", tuple(value.shape), str(value.dtype), small)
    return ("object", type(value).__qualname__)


_MODULE_INTERNALS = {
    "training",
    "_parameters",
    "_buffers",
    "_modules",
    "_non_persistent_buffers_set",
}


def structure_key(model: nn.Module, modalities: tuple[str, ...]) -> tuple:
    """Two agents may share one vmapped forward only if these keys are equal."""
    modules = []
    for name, mod in model.named_modules():
        attrs = tuple(
            sorted(
                (k, _freeze(v))
                for k, v in vars(mod).items()
                if k not in _MODULE_INTERNALS and not k.startswith("_")
            )
        )
        modules.append((name, type(mod).__module__, type(mod).__qualname__, attrs))
    params = tuple(
        (n, tuple(p.shape), str(p.dtype), p.requires_grad) for n, p in model.named_parameters()
    )
    buffers = tuple((n, tuple(b.shape), str(b.dtype)) for n, b in model.named_buffers())
    return (modalities, tuple(modules), params, buffers)


class _Call(nn.Module):
    """Runs the method's loss (or logits) on the template model, so that functional_call can
    swap one agent's parameters in for the duration of the method's own code."""

    def __init__(self, method: Any, model: nn.Module, what: str) -> None:
        super().__init__()
        self.model = model
        self._method = method
        self._what = what

    def forward(self, x: dict[str, torch.Tensor], y: torch.Tensor | None = None) -> torch.Tensor:
        if self._what == "loss":
            return self._method.loss(self.model, x, y)
        return self._method.logits(self.model, x)


@dataclass
class Cohort:
    ids: list[int]  # agent ids, ascending
    ids_t: torch.Tensor  # the same, on the device
    modalities: tuple[str, ...]  # the modalities its agents feed to the model
    template: nn.Module
    names: list[str]  # parameter names, named_parameters order
    P: dict[str, torch.Tensor]  # name -> (n, *shape)
    B: dict[str, torch.Tensor]  # buffer name -> (n, *shape)
    lr: dict[str, np.ndarray] = field(default_factory=dict)  # name -> per-agent learning rate
    mode: str = "unprobed"  # unprobed | batched | fallback
    used: list[str] = field(default_factory=list)  # parameters the loss reaches
    other: list[str] = field(default_factory=list)  # the others (passed, not differentiated)
    chunk: int = 1
    sample_bytes: float = 32768.0  # activations per agent and sample (measured by the probe)
    eval_mode: str = "unprobed"  # unprobed | batched | per-agent (faster) | fallback
    opt: StackedOptimizer | None = None
    loss_fn: _Call | None = None
    logits_fn: _Call | None = None
    grad_fn: Any = None

    @property
    def n(self) -> int:
        return len(self.ids)

    def param_bytes(self) -> int:
        return sum(p[0].numel() * p.element_size() for p in self.P.values())


# --- optimisers ---------------------------------------------------------------------------


class StackedOptimizer:
    """torch.optim.Adam / SGD (momentum, weight decay) on stacked (n_agents, ...) tensors.

    Each update repeats the single-tensor torch.optim code path op by op. Learning rates are
    per agent and parameter (per-block scales); a parameter absent from `grads` is skipped
    like a parameter whose .grad is None (no weight decay, no momentum, no Adam step count).
    """

    def __init__(self, P: dict[str, torch.Tensor], lr: dict[str, np.ndarray], cfg: TrainConfig):
        self.P = P
        self.lr = lr
        self.kind = cfg.optimizer
        self.momentum = cfg.momentum
        self.weight_decay = cfg.weight_decay
        self.state: dict[str, list[torch.Tensor]] = {}
        self.steps = {n: np.zeros(p.shape[0], dtype=np.int64) for n, p in P.items()}

    def _state(self, name: str) -> list[torch.Tensor]:
        st = self.state.get(name)
        if st is None:
            p = self.P[name]
            if self.kind == "adam":
                st = [torch.zeros_like(p), torch.zeros_like(p)]
            elif self.momentum != 0:
                st = [torch.zeros_like(p)]
            else:
                st = []
            self.state[name] = st
        return st

    @staticmethod
    def _uniform(values: np.ndarray) -> bool:
        return bool((values == values[0]).all())

    def _column(self, values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (like.dim() - 1)
        return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(shape)

    @torch.no_grad()
    def step(self, rows: Rows, grads: dict[str, torch.Tensor]) -> None:
        """One update of the agents in `rows` (a slice or an index tensor of cohort rows)."""
        sel = rows if isinstance(rows, slice) else rows.cpu().numpy()
        for name, grad in grads.items():
            p = self.P[name]
            views = [p[rows], *(t[rows] for t in self._state(name))]
            if self.kind == "adam":
                self._adam(name, sel, grad, *views)
            else:
                self._sgd(name, sel, grad, *views)
            if not isinstance(rows, slice):  # gathered copies: write them back
                for full, part in zip([p, *self._state(name)], views, strict=True):
                    full.index_copy_(0, rows, part)

    def _sgd(self, name: str, sel: Any, grad: torch.Tensor, p: torch.Tensor, *st: torch.Tensor):
        lr = self.lr[name][sel]
        if self.weight_decay != 0:
            grad = grad.add(p, alpha=self.weight_decay)
        if self.momentum != 0:
            buf = st[0]
            first = self.steps[name][sel] == 0
            if first.all():  # torch.optim: buf = grad.clone() on the first step
                buf.copy_(grad)
            elif not first.any():
                buf.mul_(self.momentum).add_(grad)
            else:
                for r in range(buf.shape[0]):
                    if first[r]:
                        buf[r].copy_(grad[r])
                    else:
                        buf[r].mul_(self.momentum).add_(grad[r])
            grad = buf
        self.steps[name][sel] += 1
        if self._uniform(lr):
            p.add_(grad, alpha=-float(lr[0]))
        else:
            p.sub_(grad * self._column(lr, p))

    def _adam(
        self,
        name: str,
        sel: Any,
        grad: torch.Tensor,
        p: torch.Tensor,
        m: torch.Tensor,
        v: torch.Tensor,
    ) -> None:
        beta1, beta2 = ADAM_BETAS
        lr = self.lr[name][sel]
        self.steps[name][sel] += 1
        steps = self.steps[name][sel]
        if self.weight_decay != 0:
            grad = grad.add(p, alpha=self.weight_decay)
        m.lerp_(grad, 1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        if self._uniform(steps) and self._uniform(lr):
            step = float(steps[0])
            bias_correction1 = 1 - beta1**step
            bias_correction2 = 1 - beta2**step
            step_size = float(lr[0]) / bias_correction1
            bias_correction2_sqrt = bias_correction2**0.5
            denom = v.sqrt().div_(bias_correction2_sqrt).add_(ADAM_EPS)
            p.addcdiv_(m, denom, value=-step_size)
        else:
            s = steps.astype(np.float64)
            step_size = lr / (1 - beta1**s)
            bias_correction2_sqrt = (1 - beta2**s) ** 0.5
            denom = v.sqrt().div_(self._column(bias_correction2_sqrt, v)).add_(ADAM_EPS)
            p.sub_(m.div(denom).mul_(self._column(step_size, p)))


# --- mixing -------------------------------------------------------------------------------


class _Mixer:
    """y = W @ x for one holder group's W, in the cheapest exact form for its size and device."""

    def __init__(self, W: sp.csr_matrix, device: torch.device, dtype: torch.dtype) -> None:
        self.source = W
        W = sp.csr_matrix(W)
        H = W.shape[0]
        self.identity = W.nnz == H and bool(np.all(W.diagonal() == 1.0))
        density = W.nnz / max(1, H * H)
        self.kind = "dense" if (H <= 16 or density >= 0.25) else "sparse"
        if self.kind == "dense":
            self.W = torch.as_tensor(W.toarray(), dtype=dtype, device=device)
        elif device.type == "cpu":
            self.kind = "scipy"
            self.Wsp = W.astype(np.dtype(str(dtype).removeprefix("torch.")))
        else:
            self.W = torch.sparse_csr_tensor(
                torch.as_tensor(W.indptr, dtype=torch.int64),
                torch.as_tensor(W.indices, dtype=torch.int64),
                torch.as_tensor(W.data, dtype=dtype),
                size=W.shape,
            ).to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "scipy":
            return torch.from_numpy(self.Wsp @ x.contiguous().numpy())
        return self.W @ x


@dataclass
class _Part:
    cohort: int
    rows: torch.Tensor | slice  # rows of the cohort's stacked tensors
    pos: torch.Tensor | slice  # rows of the group's (holders, numel) matrix


@dataclass
class _GroupPlan:
    parts: list[_Part]
    direct: bool  # the holders are exactly one whole cohort, in order
    offsets: list[tuple[str, int, int]]  # (param, start, end) columns of the block matrix


def _as_slice(idx: list[int]) -> slice | None:
    if idx and idx == list(range(idx[0], idx[0] + len(idx))):
        return slice(idx[0], idx[0] + len(idx))
    return None


# --- the engine ---------------------------------------------------------------------------


class BatchedEngine(Engine):
    name = "batched"

    # Working-set budget of one chunk of a cohort (activations + gradients + optimiser
    # temporaries); a cohort is run in chunks of at most this many bytes per step.
    chunk_bytes: int = 192 << 20
    # ... and its largest single tensor (a gradient, an activation) at most this many bytes:
    # glibc malloc serves blocks over 32 MiB with a fresh mmap on every allocation, and on a
    # VM the page faults of that can cost as much as the arithmetic.
    tensor_bytes: int = 30 << 20
    max_chunk: int | None = None  # cap on agents per chunk (None: from chunk_bytes)
    gossip_bytes: int = 64 << 20  # largest gathered (holders, columns) piece mixed at once
    eval_bytes: int = 256 << 20  # activations of one vmapped evaluation call (agents x samples)
    eval_chunk: int = 4096  # test samples per evaluation call (the reference's chunk)
    force_fallback: bool = False  # run every cohort on the per-agent path (for tests)

    # --- building -------------------------------------------------------------------------

    def adopt(self, models: list[nn.Module]) -> None:
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
        """(Re)build the cohorts from the agents' modules, fresh optimisers and group plans."""
        s = self.setup
        by_key: dict[tuple, list[int]] = {}
        for agent, model in zip(s.agents, self.models, strict=True):
            by_key.setdefault(structure_key(model, agent.modalities), []).append(agent.id)
        self.cohorts: list[Cohort] = []
        self.where = np.zeros((len(s.agents), 2), dtype=np.int64)  # agent -> (cohort, row)
        for ci, ids in enumerate(by_key.values()):
            self.cohorts.append(self._stack(ids))
            for r, a in enumerate(ids):
                self.where[a] = (ci, r)
        self.params = [dict(m.named_parameters()) for m in self.models]
        self._replan()

    def _replan(self) -> None:
        self._plans = [self._plan(g) for g in self.groups]
        self._mixers: dict[int, tuple[Any, _Mixer]] = {}

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
        c.loss_fn = _Call(s.method, template, "loss")
        c.logits_fn = _Call(s.method, template, "logits")
        return c

    def _plan(self, g: Any) -> _GroupPlan:
        per: dict[int, tuple[list[int], list[int]]] = {}
        for pos, a in enumerate(g.holders):
            ci, r = self.where[a]
            rows, poss = per.setdefault(int(ci), ([], []))
            rows.append(int(r))
            poss.append(pos)
        dev = self.setup.device
        parts = []
        for ci, (rows, poss) in per.items():
            r_sl, p_sl = _as_slice(rows), _as_slice(poss)
            parts.append(
                _Part(
                    ci,
                    r_sl if r_sl is not None else torch.tensor(rows, device=dev),
                    p_sl if p_sl is not None else torch.tensor(poss, device=dev),
                )
            )
        direct = (
            len(parts) == 1
            and isinstance(parts[0].rows, slice)
            and parts[0].rows == slice(0, self.cohorts[parts[0].cohort].n)
            and isinstance(parts[0].pos, slice)
        )
        c = self.cohorts[parts[0].cohort]
        offsets, off = [], 0
        for n in g.params:
            k = c.P[n][0].numel()
            offsets.append((n, off, off + k))
            off += k
        return _GroupPlan(parts, direct, offsets)

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

    def local_round(self, round_: int) -> float:
        s = self.setup
        steps = s.cfg.train.local_steps
        if steps == 0:
            return 0.0
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
        return (float(total) + sum(losses_pa)) / max(1, count + len(losses_pa))

    def _rows(self, rows: np.ndarray) -> Rows:
        """Cohort rows as a slice when contiguous (views, no copies), else an index tensor."""
        if rows[-1] - rows[0] + 1 == len(rows):
            return slice(int(rows[0]), int(rows[-1]) + 1)
        return torch.as_tensor(rows, dtype=torch.long, device=self.setup.device)

    # --- gossip ---------------------------------------------------------------------------

    def _mixer(self, k: int, round_: int) -> _Mixer:
        W, _ = self.schedule.mixing(k, round_)
        cached = self._mixers.get(k)
        if cached is not None and cached[0] is W:
            return cached[1]
        c = self.cohorts[self._plans[k].parts[0].cohort]
        dtype = c.P[self.groups[k].params[0]].dtype
        mixer = _Mixer(W, self.setup.device, dtype)
        self._mixers[k] = (W, mixer)
        return mixer

    def _gather(self, k: int, offsets: list[tuple[str, int, int]]) -> torch.Tensor:
        """The holders' rows of some of group k's parameters, side by side: (holders, width)."""
        plan = self._plans[k]
        first = self.cohorts[plan.parts[0].cohort].P[offsets[0][0]]
        base = offsets[0][1]
        out = torch.empty(
            (len(self.groups[k].holders), offsets[-1][2] - base),
            dtype=first.dtype,
            device=first.device,
        )
        with torch.no_grad():
            for part in plan.parts:
                c = self.cohorts[part.cohort]
                for n, lo, hi in offsets:
                    out[part.pos, lo - base : hi - base] = c.P[n].view(c.n, -1)[part.rows]
        return out

    def block_rows(self, k: int) -> torch.Tensor:
        return self._gather(k, self._plans[k].offsets)

    def _segments(self, k: int) -> list[list[tuple[str, int, int]]]:
        """Group k's parameters in runs of at most `gossip_bytes` of gathered rows (a larger
        parameter alone): W acts on each column alike, so mixing in pieces is the same maths
        as one product over the whole block, with a bounded temporary."""
        H = len(self.groups[k].holders)
        segs: list[list[tuple[str, int, int]]] = [[]]
        width = 0
        for n, lo, hi in self._plans[k].offsets:
            if segs[-1] and (width + hi - lo) * H * 4 > self.gossip_bytes:
                segs.append([])
                width = 0
            segs[-1].append((n, lo, hi))
            width += hi - lo
        return segs

    def _scatter(self, k: int, offsets: list[tuple[str, int, int]], mixed: torch.Tensor) -> None:
        """Write (holders, width) rows of some of group k's parameters back to the cohorts."""
        base = offsets[0][1]
        mixed = mixed.to(self.setup.device)
        for part in self._plans[k].parts:
            c = self.cohorts[part.cohort]
            for n, lo, hi in offsets:
                flat = c.P[n].view(c.n, -1)
                src = mixed[part.pos, lo - base : hi - base]
                if isinstance(part.rows, slice):
                    flat[part.rows] = src
                else:
                    flat.index_copy_(0, part.rows, src)

    def _intact(self, k: int) -> np.ndarray:
        """Which holders of group k hold a usable block (all values finite), read from the
        cohorts' stacked tensors without gathering the block."""
        plan = self._plans[k]
        ok = np.ones(len(self.groups[k].holders), dtype=bool)
        for part in plan.parts:
            c = self.cohorts[part.cohort]
            pos = part.pos if isinstance(part.pos, slice) else part.pos.cpu().numpy()
            ok[pos] = intact_parts([c.P[n].view(c.n, -1)[part.rows] for n, _, _ in plan.offsets])
        return ok

    @torch.no_grad()
    def gossip(self, round_: int) -> None:
        rule = self.setup.cfg.robust
        for k, g in enumerate(self.groups):
            plan = self._plans[k]
            if not self.plain_gossip:  # attacks / robust rules: every holder's whole block
                new = self.receive_group(k, round_, self.block_rows(k))
                self._scatter(k, plan.offsets, new)
                continue
            mix = self._mixer(k, round_)
            if mix.identity:
                continue  # nobody sends anything
            box = inbox(mix.source, self._intact(k))
            self.dropped += box.dropped

            def matmul(W: sp.csr_matrix, x: torch.Tensor, mix: _Mixer = mix) -> torch.Tensor:
                return (mix if W is mix.source else _Mixer(W, x.device, x.dtype))(x)

            if plan.direct:  # one whole cohort: mix its stacked tensors in place
                c = self.cohorts[plan.parts[0].cohort]
                for n in g.params:
                    flat = c.P[n].view(c.n, -1)
                    flat.copy_(combine(flat, flat, box, rule, matmul))
                continue
            for seg in self._segments(k):
                rows = self._gather(k, seg)
                self._scatter(k, seg, combine(rows, rows, box, rule, matmul))

    # --- evaluation -----------------------------------------------------------------------

    def _logits_vmapped(self, c: Cohort, rows: slice, x: dict, shared: bool) -> torch.Tensor:
        params = {f"model.{n}": c.P[n][rows] for n in c.names}
        params |= {f"model.{n}": b[rows] for n, b in c.B.items()}

        def logits_of(p: dict, xx: dict) -> torch.Tensor:
            assert c.logits_fn is not None
            return functional_call(c.logits_fn, p, (xx,))

        fn = vmap(logits_of, in_dims=(0, None if shared else 0), randomness="error")
        return fn(params, x)

    def _probe_eval(self, c: Cohort) -> None:
        s = self.setup
        if self.force_fallback or c.mode == "fallback":
            c.eval_mode = "fallback"
            return
        part = s.global_test[: min(64, len(s.global_test))]
        x = {m: s.x[m][part] for m in c.modalities}
        k = min(2, c.n)
        try:
            c.template.eval()
            with torch.no_grad(), self._rng_untouched():
                got = self._logits_vmapped(c, slice(0, k), x, shared=True)
        except Exception as e:  # noqa: BLE001
            c.eval_mode = "fallback"
            warnings.warn(
                f"batched engine: evaluation of agents {c.ids[:3]} runs per agent: vmap failed "
                f"({type(e).__name__}: {e})",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        finally:
            c.template.train()
        for r in range(k):
            model = self.models[c.ids[r]]
            model.eval()
            with torch.no_grad(), self._rng_untouched():
                want = s.method.logits(model, x)
            model.train()
            if not torch.allclose(got[r], want, rtol=1e-4, atol=1e-4):
                c.eval_mode = "fallback"
                warnings.warn(
                    f"batched engine: evaluation of agents {c.ids[:3]} runs per agent: vmapped "
                    "logits differ from the agent's own",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return
        c.eval_mode = "batched" if self._vmap_evaluates_faster(c) else "per-agent"

    def _vmap_evaluates_faster(self, c: Cohort) -> bool:
        """Forward only, a model's own large-batch kernels can beat their vmapped forms
        (a grouped convolution runs at about half the rate of a plain one on the CPU): time
        both on a slice of the global test set and keep the faster (the results agree)."""
        s = self.setup
        part = s.global_test[: min(self.eval_chunk, 256, len(s.global_test))]
        x = {m: s.x[m][part] for m in c.modalities}
        k = min(4, c.n)
        models = [self.models[a] for a in c.ids[:k]]

        def vmapped() -> None:
            self._logits_vmapped(c, slice(0, k), x, shared=True)

        def per_agent() -> None:
            for model in models:
                s.method.logits(model, x)

        best = {}
        c.template.eval()
        for model in models:
            model.eval()
        try:
            with torch.no_grad(), self._rng_untouched():
                for name, fn in (("vmap", vmapped), ("loop", per_agent)):
                    fn()  # warm-up
                    t = time.perf_counter()
                    fn()
                    best[name] = time.perf_counter() - t
        finally:
            c.template.train()
            for model in models:
                model.train()
        return best["vmap"] <= 1.1 * best["loop"]

    @torch.no_grad()
    def _correct(self, c: Cohort, shared: bool) -> torch.Tensor:
        """Correct predictions of every agent of the cohort on the global (shared) test set
        or on its own test set. A call takes up to `eval_chunk` samples (large products,
        as the reference's 4096) and as many agents as `eval_bytes` of activations allow."""
        s = self.setup
        correct = torch.zeros(c.n, dtype=torch.long, device=s.device)
        width = len(s.global_test) if shared else int(self.test_len[c.ids_t].max())
        step = max(1, min(width, self.eval_chunk))
        chunk = int(max(1, min(c.n, self.eval_bytes // (c.sample_bytes * step))))
        c.template.eval()
        try:
            for lo in range(0, c.n, chunk):
                rows = slice(lo, min(c.n, lo + chunk))
                if shared:
                    idx_all = s.global_test
                    for a in range(0, len(idx_all), step):
                        part = idx_all[a : a + step]
                        x = {m: s.x[m][part] for m in c.modalities}
                        pred = self._logits_vmapped(c, rows, x, shared=True).argmax(dim=-1)
                        correct[rows] += (pred == s.y[part]).sum(dim=1)
                else:
                    ids = c.ids_t[rows]
                    lens = self.test_len[ids]
                    for a in range(0, int(lens.max()), step):
                        cols = torch.arange(a, min(int(lens.max()), a + step), device=s.device)
                        part = self.test_table[ids][:, cols]
                        valid = cols[None, :] < lens[:, None]
                        x = {m: s.x[m][part] for m in c.modalities}
                        pred = self._logits_vmapped(c, rows, x, shared=False).argmax(dim=-1)
                        correct[rows] += ((pred == s.y[part]) & valid).sum(dim=1)
        finally:
            c.template.train()
        return correct

    def evaluate(self) -> tuple[list[float], list[float]]:
        s = self.setup
        n = len(s.agents)
        glob, loc = [0.0] * n, [0.0] * n
        n_global = max(1, len(s.global_test))
        for c in self.cohorts:
            if c.eval_mode == "unprobed":
                self._probe_eval(c)
            if c.eval_mode in ("fallback", "per-agent"):
                for a in c.ids:
                    agent = s.agents[a]
                    model = self.models[a]
                    glob[a] = accuracy(s.method, model, agent.modalities, s.x, s.y, s.global_test)
                    loc[a] = accuracy(s.method, model, agent.modalities, s.x, s.y, s.test_idx[a])
                continue
            g = self._correct(c, shared=True).tolist()
            lo = self._correct(c, shared=False).tolist()
            for r, a in enumerate(c.ids):
                glob[a] = g[r] / n_global
                loc[a] = lo[r] / max(1, len(s.test_idx[a]))
        return glob, loc

    # --- checkpoints ----------------------------------------------------------------------
    # The same layout as the reference engine's (per-agent model state dicts and torch.optim
    # state dicts), so a checkpoint written by one engine resumes on the other.

    def _optimizer_order(self, a: int) -> list[str]:
        """Parameter names in the order of the reference's optimiser (blocks, then names)."""
        return [n for names in param_blocks(self.models[a]).values() for n in names]

    def state_dict(self) -> dict[str, Any]:
        s = self.setup
        train = s.cfg.train
        optimizers = []
        for a, model in enumerate(self.models):
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
            scale = {b: s.method.lr_scale(s.agents[a], b) for b in param_blocks(model)}
            groups = make_optimizer(model, train, scale).state_dict()["param_groups"]
            optimizers.append({"state": state, "param_groups": groups})
        return {"models": [m.state_dict() for m in self.models], "optimizers": optimizers}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restack()
        with torch.no_grad():
            for model, sd in zip(self.models, state["models"], strict=True):
                model.load_state_dict(sd)
        adam = self.setup.cfg.train.optimizer == "adam"
        for a, osd in enumerate(state["optimizers"]):
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
