"""PARSE-plus: PARSE with slices that mean what their names say, a synergy fusion that can
learn interactions, and a personal part that never travels.

Model (models/parse_plus.py): a trunk per modality, one non-linear projector per slice, unique
/ redundant / synergy heads as in PARSE, an interaction-capable fusion (`method.plus_fusion`),
per-agent ensemble weights and an optional private head.

Loss:  CE(ensemble, y) + lambda_h * sum_heads CE(head, y)
                               (with plus_residual: CE(head + sg(redundant head), y) for u, s)
                               (with plus_agreement: every head reads sg(r): r learns from
                                L_align alone)
       + beta * L_align                (PARSE's InfoNCE on r; separation for one modality)
       + gamma * L_dep                 (u_m against r_m and against the other modalities' r)
       + delta * L_modality            (a discriminator must tell m from u_m)
       + cross * L_cross               (how well a private predictor reads u_a from b's
                                        slices; the predictor fits on constant inputs)
       + adversary * L_confuse         (a private classifier must not read from u_a what
                                        b's own heads predict)
Share plan (who averages which block):
    enc.m (trunk, u and r projectors),
    head.unique.m                               agents holding modality m
    proj.s.m (s projector)                      multimodal agents holding m (only they have one)
    head.redundant                              as PARSE (method.redundant_head_scope)
    head.modality (discriminator)               every agent
    synergy (fusion + synergy head)             agents of the same multimodal type
    personal (ensemble weights, private head)   nobody
    private (plus_private: the local model)     nobody
    cross (u_a-from-b predictors)               nobody
    adversary (q_b-from-u_a classifiers)        nobody
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations, permutations
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from parse_dfl.config import Config
from parse_dfl.data.base import MultimodalDataset
from parse_dfl.data.partition import AgentSpec, parse_mix
from parse_dfl.errors import UserError
from parse_dfl.methods.base import Share, SharePlan
from parse_dfl.methods.disentangle import (
    DEPENDENCE,
    modality_loss,
    predictability,
    predictor_fit,
)
from parse_dfl.methods.local import fusion_classifier
from parse_dfl.methods.parse import ParseMethod
from parse_dfl.models.parse import ParseOutput
from parse_dfl.models.parse_plus import ParsePlusModel, cross_key

FLOOR = 0.125  # least share of the embedding any slice gets from a PID-derived split


def allocate_split(
    total: int, weights: tuple[float, float, float], floor: float = FLOOR
) -> tuple[int, int, int]:
    """Divide `total` units among (u, r, s) in proportion to `weights`, each slice keeping at
    least `floor` of the total (a PID estimate of zero is no proof that a slice is useless)."""
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    share = w / w.sum() if w.sum() > 0 else np.full(3, 1 / 3)
    frac = floor + (1 - 3 * floor) * share
    sizes = np.maximum(1, np.round(frac * total)).astype(int)
    sizes[int(np.argmax(sizes))] += total - int(sizes.sum())
    return int(sizes[0]), int(sizes[1]), int(sizes[2])


def pid_terms(cfg: Config, ds: MultimodalDataset, idx: np.ndarray) -> dict[str, float]:
    """max(U1, U2), R and S (bits) of samples `idx`, averaged over pairs of modalities."""
    from parse_dfl.diagnostics.pid import default_clusters, pid_estimate

    terms: dict[str, list[float]] = {"U": [], "R": [], "S": []}
    for a, b in combinations(list(ds.modalities), 2):
        est = pid_estimate(
            ds.modalities[a][idx],
            ds.modalities[b][idx],
            ds.labels[idx],
            clusters=default_clusters(cfg),
            seed=cfg.seed,
        )
        terms["U"].append(max(est["U1"], est["U2"]))
        terms["R"].append(est["R"])
        terms["S"].append(est["S"])
    return {k: float(np.mean(v)) for k, v in terms.items()}


def pid_split(cfg: Config, ds: MultimodalDataset) -> tuple[tuple[int, int, int], dict[str, float]]:
    """Slice sizes from the PID of the agents' *training* samples (never their test samples):
    u ~ max(U1, U2), r ~ R, s ~ S; total = sum(model.split).

    The estimate pools every agent's training data, so it is an offline, dataset-level choice
    (like any hyperparameter), not something the agents could compute without a server."""
    from parse_dfl.data.partition import partition

    split = cfg.model.split
    if len(ds.modalities) < 2:
        return (split[0], split[1], split[2]), {}
    train = np.sort(np.concatenate([a.train_idx for a in partition(ds, cfg)]))
    pid = pid_terms(cfg, ds, train)
    return allocate_split(sum(split), (pid["U"], pid["R"], pid["S"])), pid


def auto_projector_hidden(width: int, split: tuple[int, int, int]) -> int:
    """Hidden units per projector such that the three projectors have no more parameters than
    PARSE's last encoder layer (width -> sum(split)): the bytes sent stay PARSE's."""
    total = sum(split)
    return max(1, (width * total) // (3 * width + 3 + total))


class ParsePlusMethod(ParseMethod):
    name = "parse-plus"
    local_names = ("ensemble", "private", "mean")  # ParsePlusModel.choice's values
    description = (
        "PARSE-plus: per-slice projectors, disentangling losses, interaction fusion, "
        "personal ensemble weights"
    )

    def __init__(self, cfg: Config, ds: MultimodalDataset, estimate_pid: bool = True) -> None:
        """`estimate_pid` False: a `plus_split: pid` run keeps model.split (for `check`)."""
        super().__init__(cfg, ds)
        self.pid: dict[str, float] = {}
        split = cfg.model.split
        self.split: tuple[int, int, int] = (split[0], split[1], split[2])
        if cfg.method.plus_synergy_raw and cfg.method.plus_synergy_trunk:
            raise UserError(
                "method.plus_synergy_raw",
                "the s projector reads either the raw input or its own trunk; "
                "set method.plus_synergy_trunk=0",
            )
        self._check_private_choice(cfg, ds)
        if cfg.method.plus_split == "pid" and estimate_pid:
            self.split, self.pid = pid_split(cfg, ds)

    @staticmethod
    def _check_private_choice(cfg: Config, ds: MultimodalDataset) -> None:
        """A fixed choice needs a private model, names agent types of the mix, and leaves no
        samples held out for a choice it does not make."""
        fixed = cfg.method.plus_private_choice
        if not fixed:
            return
        types = {"+".join(m) for m, _ in parse_mix(cfg.agents.mix, list(ds.modalities))}
        unknown = sorted(set(fixed) - types)
        if not cfg.method.plus_private:
            why = "needs method.plus_private=true"
        elif unknown:
            why = f"'{unknown[0]}' is not an agent type of the mix ({', '.join(sorted(types))})"
        elif cfg.partition.select_fraction > 0 or cfg.partition.select_from != "train":
            why = (
                "is fixed, so no samples are held out for it: set "
                "partition.select_fraction=0 and partition.select_from=train"
            )
        else:
            return
        raise UserError("method.plus_private_choice", why)

    @classmethod
    def check(cls, cfg: Config, ds: MultimodalDataset) -> None:
        """Without the PID estimate (tens of seconds per run): it refuses no setting."""
        cls(cfg, ds, estimate_pid=False)

    def build_model(self, agent: AgentSpec) -> nn.Module:
        mc, mo = self.cfg.method, self.cfg.model
        hidden = mc.plus_projector_hidden or auto_projector_hidden(agent.width, self.split)
        d_s = self.split[2]
        model = ParsePlusModel(
            agent.modalities,
            self.kinds,
            self.input_shapes,
            agent.width,
            self.split,
            self.n_classes,
            projectors=mc.plus_projectors,
            projector_hidden=hidden,
            fusion=mc.plus_fusion,
            fusion_hidden=mc.plus_fusion_hidden,
            head_hidden=mo.head_hidden,
            synergy_hidden=d_s if mc.plus_synergy_hidden < 0 else mc.plus_synergy_hidden,
            synergy_trunk=mc.plus_synergy_trunk,
            synergy_raw=mc.plus_synergy_raw,
            discriminator=len(self.modalities) if mc.plus_discriminator else 0,
            personal_weights=mc.plus_personal_weights,
            personal_head=mc.plus_personal_head,
            local_head=mc.plus_local_head,
            local_hidden=mc.plus_local_hidden,
            agreement=mc.plus_agreement,
            cross=mc.plus_cross > 0,
            adversary=mc.plus_adversary > 0,
            ensemble=mo.ensemble,
            encoder=mo.encoder,
        )
        if mc.plus_private:
            model.attach_private(fusion_classifier(self, agent, agent.modalities))
        return model

    def head_loss(self, out: ParseOutput, y: torch.Tensor) -> torch.Tensor:
        """With `method.plus_residual`, every head but the redundant one is trained on what
        the redundant head leaves unexplained: its logits are added to the redundant head's
        (held constant) in its own cross-entropy. A unique slice then has no reason to encode
        what the redundant slice already predicts, and the redundant head is trained as before.
        """
        if not self.cfg.method.plus_residual:
            return super().head_loss(out, y)
        base = out.heads["redundant"].detach()
        terms = [
            F.cross_entropy(h if name == "redundant" else h + base, y)
            for name, h in out.heads.items()
        ]
        return sum(terms[1:], terms[0])

    def dependence(self, out: ParseOutput) -> torch.Tensor:
        """Mean dependence of each u_m with its own r_m and with every other modality's r.

        r is held constant here: the penalty moves u away from r, never r away from u. A
        symmetric penalty cannot tell which slice should keep shared label information, and
        on redundant data it let r lose it (validation: 68 % instead of 91 %)."""
        dep = DEPENDENCE[self.cfg.method.plus_decor]
        mods = list(out.unique)
        r = {m: v.detach() for m, v in out.redundant.items()}
        terms = [dep(out.unique[m], r[m]) for m in mods]
        terms += [dep(out.unique[a], r[b]) for a, b in permutations(mods, 2)]
        return torch.stack(terms).mean()

    @staticmethod
    def over_pairs(
        out: ParseOutput, term: Callable[[str, str], tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Means over the ordered pairs of modalities (a, b) of the two parts of `term`."""
        parts = [term(a, b) for a, b in permutations(list(out.unique), 2)]
        return torch.stack([p[0] for p in parts]).mean(), torch.stack([p[1] for p in parts]).mean()

    def cross_terms(
        self, model: ParsePlusModel, out: ParseOutput
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the predictors' fit, the encoder's penalty), each a mean over ordered pairs (a, b).

        A private linear predictor learns to read u_a from modality b's slices (held
        constant); the penalty is how well it does, the squared correlation of each unit of
        u_a with its prediction (held constant). What b also knows is redundant, so it should
        leave u_a; what only a knows cannot be predicted and stays."""
        cross = model.cross
        assert cross is not None

        def term(a: str, b: str) -> tuple[torch.Tensor, torch.Tensor]:
            src = torch.cat([out.unique[b], out.redundant[b], out.synergy[b]], dim=1)
            pred = cross[cross_key(a, b)](src.detach())
            return predictor_fit(pred, out.unique[a]), predictability(pred.detach(), out.unique[a])

        return self.over_pairs(out, term)

    def adversary_terms(
        self, model: ParsePlusModel, out: ParseOutput
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the adversaries' fit, the encoder's confusion loss), means over ordered pairs.

        What modality b predicts on its own, q_b (its unique head, already in `out`, and the
        redundant head on r_b alone, held constant), is what b knows about the label. A
        private classifier learns to read q_b from u_a (held constant); u_a is then pushed to
        make that classifier's output uniform (its weights held constant). Where b knows the
        label, it leaves u_a; where b knows nothing, q_b carries no label and u_a keeps it.
        Unlike a correlation penalty, the classifier reads u_a as a probe does."""
        adversary = model.adversary
        assert adversary is not None
        q = {
            b: torch.softmax(
                (out.heads[f"unique.{b}"] + model.redundant_head(out.redundant[b])) / 2, dim=-1
            ).detach()
            for b in out.unique
        }

        def term(a: str, b: str) -> tuple[torch.Tensor, torch.Tensor]:
            adv = adversary[cross_key(a, b)]
            assert isinstance(adv, nn.Linear)
            fit = -(q[b] * F.log_softmax(adv(out.unique[a].detach()), dim=-1)).sum(1).mean()
            frozen = F.linear(out.unique[a], adv.weight.detach(), adv.bias.detach())
            return fit, -F.log_softmax(frozen, dim=-1).mean()

        return self.over_pairs(out, term)

    def discrimination(self, model: ParsePlusModel, out: ParseOutput) -> torch.Tensor:
        """Mean cross-entropy of the discriminator naming each unique slice's modality."""
        assert model.discriminator is not None
        terms = [
            modality_loss(model.discriminator(u), self.modalities.index(m))
            for m, u in out.unique.items()
        ]
        return torch.stack(terms).mean()

    def loss(self, model: nn.Module, x: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """PARSE's objective, plus the u/r dependence penalty and the modality discriminator."""
        mc = self.cfg.method
        assert isinstance(model, ParsePlusModel)
        out = model(x)
        total = self.objective(out, y)
        if mc.plus_decor != "none" and mc.plus_gamma > 0:
            total = total + mc.plus_gamma * self.dependence(out)
        if model.discriminator is not None and mc.plus_delta > 0:
            total = total + mc.plus_delta * self.discrimination(model, out)
        if model.local_head is not None:
            total = total + F.cross_entropy(self.corrected(model, out, detach=True), y)
        if model.private is not None:
            total = total + F.cross_entropy(model.private(x), y)
        if model.cross is not None and len(out.unique) == len(model.modalities):
            fit, pen = self.cross_terms(model, out)
            total = total + fit + mc.plus_cross * pen
        if model.adversary is not None and len(out.unique) == len(model.modalities):
            fit, confuse = self.adversary_terms(model, out)
            total = total + fit + mc.plus_adversary * confuse
        return total

    @staticmethod
    def corrected(model: ParsePlusModel, out: ParseOutput, detach: bool = False) -> torch.Tensor:
        """The ensemble plus the agent's private correction (`method.plus_local_head`). Trained
        on detached inputs, its loss reaches only the private head: the shared blocks get the
        gradients they would get without it."""
        assert model.local_head is not None
        base, feats = out.ensemble, model.slices(out)
        if detach:
            base, feats = base.detach(), feats.detach()
        return base + model.local_head(feats)

    def local_logits(self, model: nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """Under the local protocol, with the private correction when there is one; with a
        private model, the predictor the agent chose on its held-out samples (log-probabilities
        of the ensemble, of the private model, or of their mean: `choose_local`)."""
        assert isinstance(model, ParsePlusModel)
        out = model(x)
        shared = out.ensemble if model.local_head is None else self.corrected(model, out)
        if model.private is None:
            return shared
        p_shared = torch.softmax(shared, dim=-1)
        p_own = torch.softmax(model.private(x), dim=-1)
        candidates = torch.stack([p_shared, p_own, (p_shared + p_own) / 2])
        # a gather, not a branch: the batched engine vmaps this over agents
        picked = torch.index_select(candidates, 0, model.choice.reshape(1))[0]
        return torch.log(picked.clamp_min(1e-12))

    def local_candidates(self) -> int:
        return 3 if self.cfg.method.plus_private else 1

    def pick_local(
        self, correct: np.ndarray, sizes: np.ndarray, agents: list[AgentSpec]
    ) -> list[int]:
        """The most accurate candidate on the held-out samples, the ensemble (0) unless
        another beats it by more than `method.plus_private_margin`, the first of equals.
        With `method.plus_private_scope: type` the counts are pooled over the agents of a
        type first (what a gossip average of three numbers per agent among them reaches),
        so every agent of a type makes one choice on all their held-out samples."""
        mc = self.cfg.method
        correct, sizes = correct.astype(np.float64), sizes.astype(np.float64)
        if mc.plus_private_scope == "type":
            types = [a.type for a in agents]
            for t in set(types):
                cols = [i for i, u in enumerate(types) if u == t]
                correct[:, cols] = correct[:, cols].sum(axis=1, keepdims=True)
                sizes[cols] = sizes[cols].sum()
        acc = correct / np.maximum(sizes, 1)
        best = np.argmax(acc, axis=0)  # the first of equals
        gain = acc[best, np.arange(acc.shape[1])] - acc[0]
        return [
            int(k) if g > mc.plus_private_margin else 0 for k, g in zip(best, gain, strict=True)
        ]

    def fixed_local(self, agents: list[AgentSpec]) -> list[int] | None:
        """`method.plus_private_choice`: each agent's type's predictor (the ensemble if its
        type is not named)."""
        fixed = self.cfg.method.plus_private_choice  # checked: only with a private model
        if not fixed:
            return None
        return [self.local_names.index(fixed.get(a.type, "ensemble")) for a in agents]

    def choose_local(self, model: nn.Module, candidate: int) -> None:
        assert isinstance(model, ParsePlusModel)
        if model.private is not None:
            model.choice.fill_(candidate)

    def share_plan(self, agent: AgentSpec, model: nn.Module) -> SharePlan:
        """PARSE's plan; the s projectors among multimodal agents, the discriminator among
        all, the personal part with nobody."""
        mc = self.cfg.method
        plan = super().share_plan(agent, model)
        if mc.plus_discriminator:
            plan["head.modality"] = Share()
        if len(agent.modalities) >= 2:
            for m in agent.modalities:
                plan[f"proj.s.{m}"] = Share(group="multimodal")
        if mc.plus_personal_weights or mc.plus_personal_head:
            plan["personal"] = None
        if mc.plus_local_head:
            plan["local"] = None
        if mc.plus_cross > 0 and len(agent.modalities) >= 2:
            plan["cross"] = None
        if mc.plus_adversary > 0 and len(agent.modalities) >= 2:
            plan["adversary"] = None
        if mc.plus_private:
            plan["private"] = None
        return plan

    def summary(self) -> dict[str, Any]:
        """The slice sizes used (and, with `plus_split: pid`, the PID they came from)."""
        out: dict[str, Any] = {"split": list(self.split)}
        if self.pid:
            out["pid_bits"] = dict(self.pid)
        return out
