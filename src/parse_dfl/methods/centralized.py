"""`centralized`: the upper reference. NOT a decentralized method.

What it stands for: one model trained on the union of all agents' training data, each sample
with the modalities its agent holds (that is the data a server would have if the agents
handed it over). The model is dsgd-task's: all K encoders (a missing modality zero-filled),
mean fusion, one classifier, CE loss; it is evaluated like every method, each agent on its
own modalities.

How it runs on the same engines: every agent holds that one model (same width for all: the
`agents.width` setting, whatever `width_by_type` says), trains it for `local_steps` steps on
its own shard, and every block is averaged over ALL agents with exact uniform weights after
every round (the complete graph: Metropolis-Hastings weights are then 1/N). All agents hold
the same model after every round, so this is training on the pooled data up to the usual
local-SGD approximation (exact large-batch SGD for local_steps = 1 and plain SGD; with Adam
each agent keeps its own moments). Same encoders, optimiser and budget of rounds and steps as
every other method; bytes_sent is meaningless for it.

The complete graph: a method cannot add links through its share plan, so the pooled-data
reading needs `topology.name: full`. `full_graph = True` asks the setup for the complete
graph whatever the config says (an engine hook: `Method.topology_config`, see below); until
the setup honours it, constructing the method on another topology warns that the run is then
dsgd-task on that graph.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import ClassVar

from torch import nn

from parse_dfl.config import Config, TopologyConfig
from parse_dfl.data.base import MultimodalDataset
from parse_dfl.data.partition import AgentSpec
from parse_dfl.methods.base import Method, Share, SharePlan
from parse_dfl.methods.local import MonolithicMethod


class CentralizedMethod(MonolithicMethod):
    name = "centralized"
    description = (
        "NOT decentralized: upper reference, one model on all agents' data pooled "
        "(all encoders, exact averaging over all agents every round)"
    )
    all_encoders = True
    full_graph: ClassVar[bool] = True

    def __init__(self, cfg: Config, ds: MultimodalDataset) -> None:
        super().__init__(cfg, ds)
        if cfg.topology.name != "full" and not hasattr(Method, "topology_config"):
            warnings.warn(
                "centralized needs the complete graph to stand for training on pooled data; "
                f"on topology '{cfg.topology.name}' it is dsgd-task on that graph. "
                "Run it with topology.name=full.",
                stacklevel=2,
            )

    def topology_config(self, topology: TopologyConfig) -> TopologyConfig:
        """The graph this method runs on (the proposed hook): always the complete graph."""
        return topology.model_copy(update={"name": "full", "holder_graph": "induced"})

    def build_model(self, agent: AgentSpec) -> nn.Module:
        return super().build_model(dataclasses.replace(agent, width=self.cfg.agents.width))

    def share_plan(self, agent: AgentSpec, model: nn.Module) -> SharePlan:
        return {block: Share() for block in model.block_prefixes()}  # type: ignore[operator]
