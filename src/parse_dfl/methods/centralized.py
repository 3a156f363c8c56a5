"""`centralized`: the upper reference. NOT a decentralized method.

What it stands for: one model trained on the union of all agents' training data, each sample
with the modalities its agent holds (that is the data a server would have if the agents
handed it over). The model has dsgd-task's parameters (all K encoders, one classifier, CE
loss) but the embedding is the mean over the modalities a sample *has* (a missing one is
skipped, not zero-filled): one model for inputs with any subset of modalities, the usual way
to pool samples with missing modalities. On the watch data (10:10:10, 40 rounds) it reached
0.82 this way and 0.76 with zero-filling, below PARSE's 0.81: zero-filling made the reference
no upper reference. It is evaluated like every method, each agent on its own modalities.

How it runs on the same engines: every agent holds that one model (same width for all: the
`agents.width` setting, whatever `width_by_type` says), trains it for `local_steps` steps on
its own shard, and every block is averaged over ALL agents with exact uniform weights after
every round (the complete graph: Metropolis-Hastings weights are then 1/N). All agents hold
the same model after every round, so this is training on the pooled data up to the usual
local-SGD approximation (exact large-batch SGD for local_steps = 1 and plain SGD; with Adam
each agent keeps its own moments). Same encoders, optimiser and budget of rounds and steps as
every other method; bytes_sent is meaningless for it.

The complete graph: `topology_config` replaces the configured graph by the complete one
whatever the config says (results.json records it as `topology_used`).
"""

from __future__ import annotations

from torch import nn

from parse_dfl.config import TopologyConfig
from parse_dfl.data.partition import AgentSpec
from parse_dfl.methods.base import Share, SharePlan
from parse_dfl.methods.local import MonolithicMethod
from parse_dfl.models.monolithic import FusionClassifier


class CentralizedMethod(MonolithicMethod):
    name = "centralized"
    description = (
        "NOT decentralized: upper reference, one model on all agents' data pooled "
        "(all encoders, exact averaging over all agents every round)"
    )

    def topology_config(self, topology: TopologyConfig) -> TopologyConfig:
        """Always the complete graph: every agent averages with every other."""
        return topology.model_copy(update={"name": "full", "holder_graph": "induced"})

    def build_model(self, agent: AgentSpec) -> nn.Module:
        return FusionClassifier(
            self.modalities,
            self.kinds,
            self.input_shapes,
            self.cfg.agents.width,
            sum(self.cfg.model.split),
            self.n_classes,
            head_hidden=self.cfg.model.head_hidden,
            missing="skip",
            encoder=self.cfg.model.encoder,
        )

    def share_plan(self, agent: AgentSpec, model: nn.Module) -> SharePlan:
        return {block: Share() for block in model.block_prefixes()}  # type: ignore[operator]
