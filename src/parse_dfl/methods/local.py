"""`local`: every agent trains the usual multimodal model on its own data, and never talks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from parse_dfl.data.partition import AgentSpec
from parse_dfl.methods.base import Method, SharePlan
from parse_dfl.models.monolithic import FusionClassifier


def fusion_classifier(method: Method, agent: AgentSpec, modalities: tuple[str, ...]) -> nn.Module:
    """The usual multimodal model of one agent over `modalities`, as the config sets it."""
    cfg = method.cfg
    return FusionClassifier(
        modalities,
        method.kinds,
        method.input_shapes,
        agent.width,
        sum(cfg.model.split),
        method.n_classes,
        head_hidden=cfg.model.head_hidden,
        missing=cfg.method.missing_modality,
        encoder=cfg.model.encoder,
    )


class MonolithicMethod(Method):
    """Shared base of the single-embedding methods: encoders -> mean -> classifier, CE loss."""

    all_encoders = False  # dsgd-task gives every agent every encoder (missing ones zero-filled)

    def build_model(self, agent: AgentSpec) -> nn.Module:
        return fusion_classifier(
            self, agent, self.modalities if self.all_encoders else agent.modalities
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
