"""The three decentralized-SGD baselines: one monolithic model per agent, shared three ways.

Every agent's model is the usual single-embedding network (models/monolithic.py): one
encoder per modality -> mean of the embeddings -> one classifier, trained with CE.

    method          encoders                          classifier     what it tests
    dsgd-task       all K on every agent, missing     whole graph    one shared embedding for
                    modality zero-filled; whole graph                everybody (what PARSE argues
                                                                     against)
    dsgd-modality   own only; among that modality's   local          sharing only what is
                    holders                                          modality-specific
    dsgd-hybrid     own only; among that modality's   whole graph    modality-wise encoders, one
                    holders                                          task classifier

"Whole graph" works for the classifier of dsgd-modality/-hybrid because it has the same shape
(embed_dim -> n_classes) on every agent, whatever its modalities.
"""

from __future__ import annotations

from torch import nn

from parse_dfl.data.partition import AgentSpec
from parse_dfl.methods.base import Share, SharePlan
from parse_dfl.methods.local import MonolithicMethod


class DsgdTaskMethod(MonolithicMethod):
    name = "dsgd-task"
    description = "all K encoders on every agent (missing zero-filled), everything averaged by all"
    all_encoders = True

    def share_plan(self, agent: AgentSpec, model: nn.Module) -> SharePlan:
        return {block: Share() for block in model.block_prefixes()}  # type: ignore[operator]


class DsgdModalityMethod(MonolithicMethod):
    name = "dsgd-modality"
    description = "own encoders averaged among each modality's holders; classifier local"

    def share_plan(self, agent: AgentSpec, model: nn.Module) -> SharePlan:
        plan: SharePlan = {f"enc.{m}": Share() for m in agent.modalities}
        plan["classifier"] = None
        return plan


class DsgdHybridMethod(MonolithicMethod):
    name = "dsgd-hybrid"
    description = "own encoders averaged among each modality's holders; classifier by all"

    def share_plan(self, agent: AgentSpec, model: nn.Module) -> SharePlan:
        plan: SharePlan = {f"enc.{m}": Share() for m in agent.modalities}
        plan["classifier"] = Share()
        return plan
