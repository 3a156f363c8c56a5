"""`local`: every agent trains the usual multimodal model on its own data, and never talks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from parse_dfl.data.partition import AgentSpec
from parse_dfl.methods.base import Method, SharePlan
from parse_dfl.models.monolithic import FusionClassifier


class MonolithicMethod(Method):
    """Shared base of the single-embedding methods: encoders -> mean -> classifier, CE loss."""

    all_encoders = False  # dsgd-task gives every agent every encoder (missing ones zero-filled)

    def build_model(self, agent: AgentSpec) -> nn.Module:
        mods = self.modalities if self.all_encoders else agent.modalities
        return FusionClassifier(
            mods,
            self.kinds,
            self.input_shapes,
            agent.width,
            sum(self.cfg.model.split),
            self.n_classes,
            head_hidden=self.cfg.model.head_hidden,
            missing=self.cfg.method.missing_modality,
            encoder=self.cfg.model.encoder,
        )

    def loss(self, model: nn.Module, x: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    def logits(self, model: nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(x)


class LocalMethod(MonolithicMethod):
    name = "local"
    description = "no communication: each agent trains alone"

    def share_plan(self, agent: AgentSpec, model: nn.Module) -> SharePlan:
        return {block: None for block in model.block_prefixes()}  # type: ignore[operator]
