"""What a method is: a model builder, a loss, and a share plan. Engines run any method.

A method never communicates. It only says, for each agent and each block of that agent's
model, with whom the block may be averaged (a `Share`) or that it stays local (`None`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from parse_dfl.config import Config, TopologyConfig
from parse_dfl.data.base import MultimodalDataset
from parse_dfl.data.partition import AgentSpec


@dataclass(frozen=True)
class Share:
    """How one agent shares one block.

    Holders of the same block with the same `group` and the same parameter shapes average
    together. Two holders may be linked only if their `tags` intersect (empty tags: any holder).
    """

    group: str = "all"
    tags: frozenset[str] = frozenset()


SharePlan = dict[str, Share | None]


class Method(ABC):
    name: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel] | None] = None
    """A plug-in method's own settings: a pydantic model that checks `method.options` when the
    config is loaded (unknown keys are refused); the checked values are `self.options`."""

    def __init__(self, cfg: Config, ds: MultimodalDataset) -> None:
        self.cfg = cfg
        self.options: BaseModel | None = (
            None if self.Options is None else self.Options.model_validate(cfg.method.options)
        )
        self.modalities = tuple(ds.modalities)
        self.kinds = dict(ds.kinds)
        self.input_shapes = {m: ds.input_shape(m) for m in ds.modalities}
        self.n_classes = ds.n_classes

    @classmethod
    def check(cls, cfg: Config, ds: MultimodalDataset) -> None:
        """Raise on settings the method refuses and warn on ones it ignores, before anything
        runs (a sweep checks every run first). The default builds the method; a method whose
        construction is costly overrides this to check without the cost."""
        cls(cfg, ds)

    @abstractmethod
    def build_model(self, agent: AgentSpec) -> nn.Module:
        """The agent's model; must provide `block_prefixes()` (see models/blocks.py)."""

    @abstractmethod
    def loss(self, model: nn.Module, x: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """Scalar training loss on one mini-batch of the agent's own modalities."""

    @abstractmethod
    def logits(self, model: nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class scores (argmax = prediction) from the agent's own modalities."""

    def local_logits(self, model: nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class scores under the *local* protocol (the agent on its own test data): a
        method may add what it learned of its own data there (a private head, say). Every
        engine scores the local protocol with this and the global one with `logits`."""
        return self.logits(model, x)

    local_names: ClassVar[tuple[str, ...]] = ()
    """Names of the local-protocol candidates, in `choose_local`'s order (results.json's
    `local_choice_by_type`); empty when the method has one predictor."""

    def local_candidates(self) -> int:
        """How many local-protocol predictors an agent can choose among (`choose_local`). With
        more than one and held-out samples (partition.select_fraction), every engine scores
        each candidate on every agent's held-out samples before each evaluation and sets the
        best: the choice is made on the agent's own data, never on its test split."""
        return 1

    def pick_local(
        self, correct: np.ndarray, sizes: np.ndarray, agents: list[AgentSpec]
    ) -> list[int]:
        """Each agent's candidate, from `correct` (candidates x agents: correct predictions
        on each agent's held-out samples, of `sizes`): the most accurate, the first of equals."""
        return [int(k) for k in np.argmax(correct, axis=0)]

    def fixed_local(self, agents: list[AgentSpec]) -> list[int] | None:
        """Each agent's candidate when the configuration fixes it (no held-out samples are
        read); None: chosen on held-out samples, or nothing to choose."""
        return None

    def choose_local(self, model: nn.Module, candidate: int) -> None:
        """Make `local_logits` use predictor `candidate` (0 = the method's plain one); kept in
        the model (a buffer), so checkpoints and every engine carry the choice."""
        return None

    @abstractmethod
    def share_plan(self, agent: AgentSpec, model: nn.Module) -> SharePlan:
        """Block name -> Share (averaged with other holders) or None (kept local)."""

    # Multi-stage methods (e.g. harmony) override these; single-stage methods need none.
    def stage_of(self, round_: int) -> int:
        """The stage a round belongs to; engines call `enter_stage` when it changes."""
        return 0

    def enter_stage(self, stage: int, agents: list[AgentSpec], models: list[nn.Module]) -> None:
        """Called before the first round of `stage` (> 0) with every agent's model; may
        change parameters and the method's own state (the share plan is asked again after)."""
        return None

    def lr_scale(self, agent: AgentSpec, block: str) -> float:
        """Multiplier of the learning rate for one block of one agent (in the current stage)."""
        return 1.0

    def topology_config(self, topology: TopologyConfig) -> TopologyConfig:
        """The graph this method runs on; a reference method (centralized) may replace it."""
        return topology

    def summary(self) -> dict:
        """Facts about the run worth keeping in results.json (e.g. harmony's clusters)."""
        return {}

    def state_dict(self) -> dict:
        """Everything the method keeps between rounds (stage, anchors, clusters, ...): it is
        saved with every checkpoint, atomically with the models, and a resumed run must
        equal the uninterrupted one bit for bit (tests/test_resume.py checks every method).
        Tensors and plain containers only: checkpoints load with weights_only=True."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`."""
        return None
