"""`harmony`: Harmony (Ouyang et al., MobiSys 2023) made server-free.

Harmony trains a multimodal network in two disentangled phases: modality-wise federated
learning of unimodal encoder+head models, then federated fusion learning on the multimodal
clients only, with clients clustered by their *modality bias*. Without a server, every
"aggregate at the server" becomes "average among the holders over the gossip graph". Rounds
1..R split into three stages of the engine (METHOD.md's "stage 1" is our stage 0):

  stage 0  rounds 1..R1, R1 = round(stage1_fraction * R)           modality-wise DSGD
           every agent has, per own modality m, an encoder enc.m and a unimodal head head.m,
           both averaged among all holders of m (uni- and multimodal). A multimodal agent
           trains each branch on its own: loss = sum_m CE(head_m(enc_m(x_m)), y); it predicts
           with the mean of its heads' logits.
  stage 1  the next W = max(1, round(warmup_fraction * (R - R1))) rounds  fusion warm-up
           multimodal agents only: a fusion classifier on the concatenated embeddings of
           the encoders (Harmony's fusion module), CE loss; encoders fine-tuned at
           lr * encoder_lr_scale and no longer shared; classifier local. At entry each
           multimodal agent records its encoders' weights (the end of modality-wise
           training) as its anchor.
  stage 2  the remaining rounds                                   clustered fusion
           at entry, each multimodal agent's modality bias = (1 - cos(enc_m now, enc_m at
           anchor)) for m in its modalities; agents of one multimodal type are clustered on
           these vectors by k-means (k = clusters, fixed seed; fewer agents than k: one
           cluster), and the classifier is averaged only with neighbours of the same type
           and cluster: Share(group="<type>/cluster<c>"). Clusters are computed once: at the
           start of stage 1 every bias is 0, and re-clustering every round would restart the
           optimisers each round (the engine rebuilds them at a stage change).

Why concatenation, not the mean that the dsgd baselines use: the encoders were trained
apart, each for its own head, so their embeddings live in different spaces; a classifier on
the concatenation can weigh each (on the watch data, 10:10:10 ring, width 32, 20 rounds,
multimodal agents reached 0.76 with it and 0.73 with the mean). Classifiers are averaged only within
one multimodal type, so their shapes always match.

Why a warm-up stage: the bias of an encoder is how far fusion training moved it from its
anchor, so it only means something after some fusion training.

Server-free cost of clustering: each multimodal agent's bias vector is a handful of floats
(one per modality); we assume it is flooded to the agents of its type (negligible, not
counted in bytes_sent), so every agent runs the same deterministic k-means and agrees on
the clusters without a coordinator.

Unimodal agents keep their stage-0 model and training for the whole run (same budget of
rounds and local steps as every method): in stages 1-2 they keep averaging enc.m and head.m
with the other *unimodal* holders of m, since the multimodal agents' encoders are now
fine-tuned privately. Every model holds all of its parameters from the start; a block with
no part in the current stage gets no gradient (the optimiser skips it) and is not shared.

The multimodal classifier starts from the same values on every agent (a seeded init), as a
shared block does in the other methods (the engine's common_init only sees stage-0 groups).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from torch import nn

from parse_dfl.config import Config
from parse_dfl.data.base import MultimodalDataset
from parse_dfl.data.partition import AgentSpec
from parse_dfl.methods.base import Method, Share, SharePlan
from parse_dfl.models.encoders import build_encoder, build_head

# Defaults of the settings (read with getattr until MethodConfig carries them).
STAGE1_FRACTION = 0.5
WARMUP_FRACTION = 0.2
ENCODER_LR_SCALE = 0.1
CLUSTERS = 2


def cluster_biases(biases: np.ndarray, k: int, seed: int) -> np.ndarray:
    """K-means labels (0..k'-1, numbered by first appearance) of the rows of `biases`.

    Fewer rows than k, or fewer distinct rows than 2: everything in cluster 0. Fewer
    distinct rows than k: k is lowered to their number (k-means cannot place k centres).
    """
    x = np.asarray(biases, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    n = x.shape[0]
    labels = np.zeros(n, dtype=np.int64)
    if n < k or n == 0:
        return labels
    k_eff = min(k, len(np.unique(x, axis=0)))
    if k_eff <= 1:
        return labels
    raw = KMeans(n_clusters=k_eff, n_init=10, random_state=seed).fit_predict(x)
    first: dict[int, int] = {}
    for c in raw.tolist():
        first.setdefault(c, len(first))
    return np.array([first[c] for c in raw.tolist()], dtype=np.int64)


def flat_weights(module: nn.Module) -> torch.Tensor:
    """A detached copy of all of a module's parameters as one vector."""
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).clone()


def modality_bias(model: HarmonyModel, anchor: dict[str, torch.Tensor]) -> np.ndarray:
    """Cosine distance of each encoder's weights from its anchor, in `anchor`'s order."""
    out = []
    for m, w0 in anchor.items():
        w = flat_weights(model.encoders[m]).double()
        out.append(max(0.0, 1.0 - float(F.cosine_similarity(w, w0.double(), dim=0))))
    return np.asarray(out, dtype=np.float64)


class HarmonyModel(nn.Module):
    """Per own modality: encoder + unimodal head; with two or more modalities also a fusion
    classifier on the concatenated embeddings (Harmony's fusion module).

    Blocks: enc.<m>, head.<m>, and `classifier` (multimodal agents only).
    """

    def __init__(
        self,
        modalities: tuple[str, ...],
        kinds: Mapping[str, str],
        input_shapes: Mapping[str, tuple[int, ...]],
        width: int,
        embed_dim: int,
        n_classes: int,
        head_hidden: int = 0,
        classifier_seed: int = 0,
        encoder: str = "auto",
    ) -> None:
        super().__init__()
        self.modalities = modalities
        self.multimodal = len(modalities) >= 2
        self.encoders = nn.ModuleDict(
            {
                m: build_encoder(kinds[m], input_shapes[m], width, embed_dim, encoder)
                for m in modalities
            }
        )
        self.heads = nn.ModuleDict(
            {m: build_head(embed_dim, n_classes, head_hidden) for m in modalities}
        )
        if self.multimodal:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(classifier_seed)
                self.classifier = build_head(embed_dim * len(modalities), n_classes, head_hidden)

    def block_prefixes(self) -> dict[str, list[str]]:
        blocks = {f"enc.{m}": [f"encoders.{m}"] for m in self.modalities}
        blocks |= {f"head.{m}": [f"heads.{m}"] for m in self.modalities}
        if self.multimodal:
            blocks["classifier"] = ["classifier"]
        return blocks

    def unimodal_logits(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each unimodal head on its encoder, for the modalities present in `x`."""
        return {m: self.heads[m](self.encoders[m](x[m])) for m in self.modalities if m in x}

    def fused_logits(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """The fusion classifier on the concatenated embeddings. If a modality is absent from
        `x` (a failed sensor at test time) the classifier cannot run: the mean logits of the
        present modalities' unimodal heads (stage 0's predictor) stand in."""
        if any(m not in x for m in self.modalities):
            return torch.stack(list(self.unimodal_logits(x).values()), dim=0).mean(dim=0)
        h = torch.cat([self.encoders[m](x[m]) for m in self.modalities], dim=1)
        return self.classifier(h)


@dataclass
class HarmonySchedule:
    """Last round of stage 0 (modality-wise) and of stage 1 (fusion warm-up)."""

    r1: int
    r_warm: int

    @classmethod
    def of(cls, rounds: int, stage1_fraction: float, warmup_fraction: float) -> HarmonySchedule:
        r1 = min(rounds, max(0, round(stage1_fraction * rounds)))
        fusion = rounds - r1
        warm = min(fusion, max(1, round(warmup_fraction * fusion))) if fusion > 0 else 0
        return cls(r1, r1 + warm)


class HarmonyMethod(Method):
    name = "harmony"
    description = (
        "Harmony, server-free: modality-wise DSGD of unimodal models, then fusion on "
        "multimodal agents with classifiers averaged within modality-bias clusters"
    )

    def __init__(self, cfg: Config, ds: MultimodalDataset) -> None:
        super().__init__(cfg, ds)
        mc = cfg.method
        self.encoder_lr_scale = float(getattr(mc, "harmony_encoder_lr_scale", ENCODER_LR_SCALE))
        self.n_clusters = int(getattr(mc, "harmony_clusters", CLUSTERS))
        self.schedule = HarmonySchedule.of(
            cfg.train.rounds,
            float(getattr(mc, "harmony_stage1_fraction", STAGE1_FRACTION)),
            float(getattr(mc, "harmony_warmup_fraction", WARMUP_FRACTION)),
        )
        self.stage = 0
        self.anchors: dict[int, dict[str, torch.Tensor]] = {}  # agent -> modality -> weights
        self.biases: dict[int, np.ndarray] = {}  # multimodal agent -> modality bias
        self.clusters: dict[int, int] = {}  # multimodal agent -> cluster within its type

    # --- model and loss ---------------------------------------------------------------

    def build_model(self, agent: AgentSpec) -> nn.Module:
        return HarmonyModel(
            agent.modalities,
            self.kinds,
            self.input_shapes,
            agent.width,
            sum(self.cfg.model.split),
            self.n_classes,
            head_hidden=self.cfg.model.head_hidden,
            classifier_seed=self.cfg.seed * 1_000_003 + 7_919,
            encoder=self.cfg.model.encoder,
        )

    def fusing(self, model: HarmonyModel) -> bool:
        """Whether this model is in its fusion phase (multimodal agent, stage >= 1)."""
        return model.multimodal and self.stage >= 1

    def loss(self, model: nn.Module, x: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        hm = cast(HarmonyModel, model)
        if self.fusing(hm):
            return F.cross_entropy(hm.fused_logits(x), y)
        per_branch = [F.cross_entropy(z, y) for z in hm.unimodal_logits(x).values()]
        return torch.stack(per_branch).sum()

    def logits(self, model: nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
        hm = cast(HarmonyModel, model)
        if self.fusing(hm):
            return hm.fused_logits(x)
        return torch.stack(list(hm.unimodal_logits(x).values()), dim=0).mean(dim=0)

    # --- sharing and stages -----------------------------------------------------------

    def share_plan(self, agent: AgentSpec, model: nn.Module) -> SharePlan:
        multimodal = len(agent.modalities) >= 2
        modality_wise = self.stage == 0 or not multimodal
        plan: SharePlan = {}
        for m in agent.modalities:
            plan[f"enc.{m}"] = Share() if modality_wise else None
            plan[f"head.{m}"] = Share() if modality_wise else None
        if multimodal:
            c = self.clusters.get(agent.id)
            clustered = self.stage >= 2 and c is not None
            plan["classifier"] = Share(group=f"{agent.type}/cluster{c}") if clustered else None
        return plan

    def stage_of(self, round_: int) -> int:
        if round_ <= self.schedule.r1:
            return 0
        return 1 if round_ <= self.schedule.r_warm else 2

    def lr_scale(self, agent: AgentSpec, block: str) -> float:
        if self.stage >= 1 and len(agent.modalities) >= 2 and block.startswith("enc."):
            return self.encoder_lr_scale
        return 1.0

    def enter_stage(self, stage: int, agents: list[AgentSpec], models: list[nn.Module]) -> None:
        multi = [
            (a, cast(HarmonyModel, m))
            for a, m in zip(agents, models, strict=True)
            if len(a.modalities) >= 2
        ]
        if stage >= 1 and not self.anchors:  # end of modality-wise training
            self.anchors = {
                a.id: {m: flat_weights(model.encoders[m]) for m in a.modalities}
                for a, model in multi
            }
        if stage >= 2:
            self.biases = {a.id: modality_bias(model, self.anchors[a.id]) for a, model in multi}
            by_type: dict[str, list[int]] = defaultdict(list)
            for a, _ in multi:
                by_type[a.type].append(a.id)
            self.clusters = {}
            for ids in by_type.values():
                labels = cluster_biases(
                    np.stack([self.biases[i] for i in ids]), self.n_clusters, self.cfg.seed
                )
                self.clusters |= dict(zip(ids, labels.tolist(), strict=True))
        self.stage = stage

    def state_dict(self) -> dict[str, Any]:
        """Stage, anchors, biases and clusters: a resumed run must share and predict exactly
        as the uninterrupted one (tensors and plain containers only, for weights_only)."""
        return {
            "stage": self.stage,
            "anchors": {a: {m: w.clone() for m, w in d.items()} for a, d in self.anchors.items()},
            "biases": {a: torch.from_numpy(np.asarray(b)).clone() for a, b in self.biases.items()},
            "clusters": dict(self.clusters),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stage = int(state["stage"])
        self.anchors = {
            int(a): {str(m): w.clone() for m, w in d.items()} for a, d in state["anchors"].items()
        }
        self.biases = {int(a): b.numpy().copy() for a, b in state["biases"].items()}
        self.clusters = {int(a): int(c) for a, c in state["clusters"].items()}

    def summary(self) -> dict[str, Any]:
        """Stage bounds, modality biases and clusters, for results.json (if the engine asks)."""
        return {
            "harmony": {
                "stage_ends": [self.schedule.r1, self.schedule.r_warm, self.cfg.train.rounds],
                "biases": {str(a): b.tolist() for a, b in self.biases.items()},
                "clusters": {str(a): c for a, c in self.clusters.items()},
            }
        }
