"""torch.optim's Adam and SGD on a cohort's stacked (n_agents, ...) parameters."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from parse_dfl.config import TrainConfig
from parse_dfl.engines.cohort import Rows

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam defaults, as the reference engine uses them
ADAM_EPS = 1e-8


class StackedOptimizer:
    """torch.optim.Adam / SGD (momentum, weight decay) on stacked (n_agents, ...) tensors.

    Each update repeats the single-tensor torch.optim code path op by op, over all parameters
    at once with `_foreach_*` kernels in the common case. Learning rates are
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
        if isinstance(rows, slice) and all(
            self._uniform(self.lr[n][sel]) and self._uniform(self.steps[n][sel]) for n in grads
        ):
            self._step_foreach(rows, grads)  # the common case: a handful of kernels
            return
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

    def _step_foreach(self, rows: slice, grads: dict[str, torch.Tensor]) -> None:
        """Every parameter of the step at once with torch's `_foreach_*` kernels (one call per
        operation over all tensors instead of one per tensor), when every row of a tensor has
        the same learning rate and step count. The operations are torch.optim's single-tensor
        ones, in the same order, so the numbers are the same."""
        names = list(grads)
        ps = [self.P[n][rows] for n in names]
        gs = [grads[n] for n in names]
        states = [[t[rows] for t in self._state(n)] for n in names]
        if self.weight_decay != 0:
            gs = list(torch._foreach_add(gs, ps, alpha=self.weight_decay))
        lrs = [float(self.lr[n][rows][0]) for n in names]
        if self.kind == "adam":
            beta1, beta2 = ADAM_BETAS
            for n in names:
                self.steps[n][rows] += 1
            steps = [float(self.steps[n][rows][0]) for n in names]
            ms, vs = [st[0] for st in states], [st[1] for st in states]
            torch._foreach_lerp_(ms, gs, 1 - beta1)
            torch._foreach_mul_(vs, beta2)
            torch._foreach_addcmul_(vs, gs, gs, value=1 - beta2)
            step_size = [lr / (1 - beta1**t) for lr, t in zip(lrs, steps, strict=True)]
            bias_correction2_sqrt = [(1 - beta2**t) ** 0.5 for t in steps]
            denom = torch._foreach_sqrt(vs)
            torch._foreach_div_(denom, bias_correction2_sqrt)
            torch._foreach_add_(denom, ADAM_EPS)
            torch._foreach_addcdiv_(ps, ms, denom, [-x for x in step_size])
            return
        if self.momentum != 0:
            bufs = [st[0] for st in states]
            first = [i for i, n in enumerate(names) if self.steps[n][rows][0] == 0]
            later = [i for i, n in enumerate(names) if self.steps[n][rows][0] != 0]
            if first:  # torch.optim: buf = grad.clone() on the first step
                torch._foreach_copy_([bufs[i] for i in first], [gs[i] for i in first])
            if later:
                torch._foreach_mul_([bufs[i] for i in later], self.momentum)
                torch._foreach_add_([bufs[i] for i in later], [gs[i] for i in later])
            gs = bufs
        for n in names:
            self.steps[n][rows] += 1
        by_lr: dict[float, list[int]] = {}
        for i, lr in enumerate(lrs):
            by_lr.setdefault(lr, []).append(i)
        for lr, idx in by_lr.items():
            torch._foreach_add_([ps[i] for i in idx], [gs[i] for i in idx], alpha=-lr)

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
