"""Cohorts: agents whose models share one structure, their parameters stacked.

Agents whose models have the same structure (class, module configuration, parameter names,
shapes and dtypes) and who feed it the same modalities form a cohort. A cohort keeps every
parameter stacked along a leading agent axis, (n_agents, *shape); each agent's nn.Module still
exists, its parameters are views of its row, so no second copy is held.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from parse_dfl.engines.stacked_optimizer import StackedOptimizer

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


class ModelCall(nn.Module):
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
        if self._what == "local_logits":
            return self._method.local_logits(self.model, x)
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
    loss_fn: ModelCall | None = None
    logits_fn: ModelCall | None = None
    local_logits_fn: ModelCall | None = None  # the local protocol's scores
    grad_fn: Any = None

    @property
    def n(self) -> int:
        return len(self.ids)

    def param_bytes(self) -> int:
        return sum(p[0].numel() * p.element_size() for p in self.P.values())
