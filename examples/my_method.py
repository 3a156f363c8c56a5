"""A method written outside parse-dfl: the baselines' model (encoders -> mean -> classifier)
trained with label-smoothed cross-entropy, every block averaged by all agents (like
dsgd-task) or, with `share: false`, none (like local).

Use it with `method.name: my_method:SmoothedCE` and this folder on PYTHONPATH; its settings
go under `method.options` and are checked by `Options` when the config is loaded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from parse_dfl.data.partition import AgentSpec
from parse_dfl.methods import Share, SharePlan
from parse_dfl.methods.local import MonolithicMethod


class SmoothedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    smoothing: float = Field(0.1, ge=0, lt=1, description="label smoothing of the CE loss")
    share: bool = Field(True, description="average every block among all agents")


class SmoothedCE(MonolithicMethod):
    name = "smoothed-ce"
    description = "label-smoothed CE on the baselines' model; everything averaged (or nothing)"
    Options = SmoothedOptions
    options: SmoothedOptions  # set by Method.__init__ from method.options

    def loss(self, model: nn.Module, x: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y, label_smoothing=self.options.smoothing)

    def share_plan(self, agent: AgentSpec, model: nn.Module) -> SharePlan:
        blocks = model.block_prefixes()  # type: ignore[operator]
        return {block: Share() if self.options.share else None for block in blocks}
