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
