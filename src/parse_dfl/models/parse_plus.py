"""The PARSE-plus model of one agent: PARSE with a real fission, an interaction-capable synergy
fusion and per-agent personalisation.

x_m --trunk_m--> t_m --P_m^u--> u_m         one trunk per modality (the encoder without its
                     --P_m^r--> r_m         last linear layer), then one small non-linear
                     --P_m^s--> s_m         projector per slice (s: multimodal agents only)
u_m -> g_m                 unique head, one per modality
mean_m r_m -> g_r          redundant head
Fuse({s_m}) -> g_s         synergy head (non-linear), only with two or more modalities
[u, r, s of all m] -> g_p  optional private head, never shared
prediction = weighted ensemble of the heads; the weights are the agent's own (never shared)

Why projectors: in PARSE the slices are blocks of one linear layer's output, so each slice is a
linear image of the same hidden vector and linear probes find the same label information in
all three. Separate non-linear projectors let the slices hold different functions of the trunk.
Why MLP/tensor fusion: the synergy of (s_a + s_b) mod C is not a sum of per-modality scores, so
mean fusion followed by a linear head cannot express it (tests/test_parse_plus.py shows it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import permutations
from typing import cast

import torch
from torch import nn

from parse_dfl.models.encoders import build_encoder, build_head
from parse_dfl.models.fusion import build_fusion
from parse_dfl.models.parse import ParseOutput, slice_heads

SLICES = ("u", "r", "s")
FUSIONS = ("mlp", "tensor", "mean", "concat", "gated", "attention")


def build_trunk(
    kind: str, input_shape: tuple[int, ...], width: int, encoder: str = "auto"
) -> nn.Module:
    """The modality's encoder up to its last hidden layer (output: `width` non-negative units).

    A built-in encoder loses its last linear layer, since each slice projector starts with its
    own; any other encoder (`model.encoder`) is kept whole, with `width` outputs and a ReLU."""
    enc = build_encoder(kind, input_shape, width, width, encoder)
    if encoder != "auto":  # a user's encoder: its layers are its own business
        return nn.Sequential(enc, nn.ReLU())
    last = getattr(enc, "out", None)
    net = getattr(enc, "net", None)
    if isinstance(last, nn.Linear):
        enc.out = nn.Identity()
    elif isinstance(net, nn.Sequential) and isinstance(net[-1], nn.Linear):
        net[-1] = nn.Identity()
    else:
        enc = nn.Sequential(enc, nn.ReLU())
    return enc


def build_projector(in_dim: int, out_dim: int, hidden: int) -> nn.Module:
    """A slice projector: linear when `hidden` is 0, else one hidden ReLU layer."""
    if hidden <= 0:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class SliceProjectors(nn.Module):
    """One projector per slice, each reading the whole trunk output. Linear projectors
    (`hidden` 0) are PARSE's fission exactly: one linear layer cut into three blocks of rows.
    `synergy` False (a unimodal agent) builds no s projector: it would never be trained."""

    def __init__(
        self,
        in_dim: int,
        split: tuple[int, int, int],
        hidden: int,
        synergy: bool = True,
        s_in: int = 0,
    ) -> None:
        """`s_in` > 0: the s projector reads `s_in` features of its own (an own trunk of that
        width, or the flattened raw input), not the shared trunk."""
        super().__init__()
        self.u = build_projector(in_dim, split[0], hidden)
        self.r = build_projector(in_dim, split[1], hidden)
        self.s = build_projector(s_in or in_dim, split[2], hidden) if synergy else None


class MLPFusion(nn.Module):
    """Concatenate the s_m and pass them through a hidden ReLU layer: any interaction."""

    def __init__(self, n_modalities: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_modalities * dim, hidden), nn.ReLU(), nn.Linear(hidden, dim)
        )

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.net(s.flatten(start_dim=1))


class TensorFusion(nn.Module):
    """Low-rank tensor fusion: the product over modalities of an affine map of each s_m.

    With the bias standing in for the appended 1 of full tensor fusion, the `hidden` products
    span rank-`hidden` multilinear forms plus every lower-order term; a linear map reads them."""

    def __init__(self, n_modalities: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.factors = nn.ModuleList(nn.Linear(dim, hidden) for _ in range(n_modalities))
        self.out = nn.Linear(hidden, dim)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        z = self.factors[0](s[:, 0])
        for m in range(1, len(self.factors)):
            z = z * self.factors[m](s[:, m])
        return self.out(z)


def build_synergy_fusion(name: str, n_modalities: int, dim: int, hidden: int) -> nn.Module:
    """`mlp` or `tensor` (interactions), or one of PARSE's fusions (models/fusion.py)."""
    if name == "mlp":
        return MLPFusion(n_modalities, dim, hidden)
    if name == "tensor":
        return TensorFusion(n_modalities, dim, hidden)
    return build_fusion(name, n_modalities, dim)


class Personal(nn.Module):
    """The agent's own part, never shared: ensemble weights over the heads (softmax, uniform
    at start: the plain mean) and, optionally, a private linear head on all its slices."""

    def __init__(
        self, n_heads: int, in_dim: int, n_classes: int, weights: bool, head: bool
    ) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(n_heads)) if weights else None
        self.head = nn.Linear(in_dim, n_classes) if head else None


def cross_key(a: str, b: str) -> str:
    """Name of the ordered pair (a, b)'s private module: the predictor of u_a from modality
    b's slices (`cross`), or the classifier of b's prediction from u_a (`adversary`)."""
    return f"{a}_from_{b}"


class ParsePlusModel(nn.Module):
    def __init__(
        self,
        modalities: tuple[str, ...],
        kinds: Mapping[str, str],
        input_shapes: Mapping[str, tuple[int, ...]],
        width: int,
        split: tuple[int, int, int],
        n_classes: int,
        *,
        projectors: bool = True,
        projector_hidden: int = 0,
        fusion: str = "mlp",
        fusion_hidden: int = 0,
        head_hidden: int = 0,
        synergy_hidden: int = 0,
        synergy_trunk: int = 0,
        synergy_raw: bool = False,
        discriminator: int = 0,
        personal_weights: bool = False,
        personal_head: bool = False,
        local_head: bool = False,
        local_hidden: int = 0,
        agreement: bool = False,
        cross: bool = False,
        adversary: bool = False,
        ensemble: str = "logits",
        encoder: str = "auto",
    ) -> None:
        """`projectors` False or `projector_hidden` 0: linear projectors (PARSE's fission);
        `fusion_hidden` 0: the synergy width; `synergy_trunk` > 0: the s slices read an own
        trunk of that width per modality (multimodal agents only); `synergy_raw`: the s
        slices read the flattened raw input (a linear map of it); `discriminator`: the number
        of modalities of the dataset (0: no discriminator); `agreement`: the heads read the r
        slices detached, so only the alignment shapes them; `cross` (multimodal agents): one
        linear predictor per ordered pair of modalities (a, b) reading u_a from b's slices;
        `adversary` (multimodal agents): one linear classifier per ordered pair reading from
        u_a what modality b predicts."""
        super().__init__()
        self.modalities = modalities
        self.agreement = agreement
        self.split: tuple[int, int, int] = (split[0], split[1], split[2])
        self.ensemble_rule = ensemble
        d_u, d_r, d_s = split
        self.trunks = nn.ModuleDict(
            {m: build_trunk(kinds[m], input_shapes[m], width, encoder) for m in modalities}
        )
        self.multimodal = len(modalities) >= 2
        hidden = projector_hidden if projectors else 0
        s_in = {m: 0 for m in modalities}
        if self.multimodal and synergy_raw:
            s_in = {m: math.prod(input_shapes[m]) for m in modalities}
        elif self.multimodal and synergy_trunk:
            s_in = {m: synergy_trunk for m in modalities}
        self.projectors = nn.ModuleDict(
            {
                m: SliceProjectors(width, self.split, hidden, self.multimodal, s_in[m])
                for m in modalities
            }
        )
        self.unique_heads = nn.ModuleDict(
            {m: build_head(d_u, n_classes, head_hidden) for m in modalities}
        )
        self.redundant_head = build_head(d_r, n_classes, head_hidden)
        if self.multimodal:
            self.fusion = build_synergy_fusion(
                fusion, len(modalities), d_s, fusion_hidden if fusion_hidden > 0 else d_s
            )
            self.synergy_head = build_head(d_s, n_classes, synergy_hidden)
        self.discriminator = nn.Linear(d_u, discriminator) if discriminator > 0 else None
        self.head_names = [f"unique.{m}" for m in modalities] + ["redundant"]
        if self.multimodal:
            self.head_names.append("synergy")
        if personal_head:
            self.head_names.append("personal")
        self.personal = (
            Personal(
                len(self.head_names),
                len(modalities) * (d_u + d_r + (d_s if self.multimodal else 0)),
                n_classes,
                personal_weights,
                personal_head,
            )
            if personal_weights or personal_head
            else None
        )
        # The synergy slice's own trunks (`synergy_trunk`): the shared trunk's u and r heads
        # fit what they can of the label, and on synergistic data (nothing in one modality)
        # that is noise, whose gradients keep the shared trunk from the interaction features.
        # The raw input instead (`synergy_raw`): with tensor fusion, s_a * s_b is then a
        # low-rank bilinear form of (x_a, x_b), the form (s_a + s_b) mod C of one-hot codes
        # takes; deep ReLU trunks start at a saddle on it that training often never leaves.
        self.s_trunks: nn.ModuleDict | None = None
        if self.multimodal and synergy_raw:
            self.s_trunks = nn.ModuleDict({m: nn.Flatten() for m in modalities})
        elif self.multimodal and synergy_trunk:
            self.s_trunks = nn.ModuleDict(
                {
                    m: build_trunk(kinds[m], input_shapes[m], synergy_trunk, encoder)
                    for m in modalities
                }
            )
        # Built last (its random init draws after every other module's) and zeroed: with or
        # without it, every other parameter starts from the same values.
        self.local_head: nn.Module | None = None
        if local_head:
            last = nn.Linear(local_hidden or self.slice_width(), n_classes)
            nn.init.zeros_(last.weight)  # the correction starts at 0: the shared ensemble
            nn.init.zeros_(last.bias)
            self.local_head = (
                nn.Sequential(nn.Linear(self.slice_width(), local_hidden), nn.ReLU(), last)
                if local_hidden
                else last
            )
        self.private: nn.Module | None = None  # attach_private
        self.choice: torch.Tensor  # a buffer, with the private model
        # Built after the private head, for the same reason.
        self.cross: nn.ModuleDict | None = None
        if cross and self.multimodal:
            self.cross = nn.ModuleDict(
                {
                    cross_key(a, b): nn.Linear(d_u + d_r + d_s, d_u)
                    for a, b in permutations(modalities, 2)
                }
            )
        self.adversary: nn.ModuleDict | None = None
        if adversary and self.multimodal:
            self.adversary = nn.ModuleDict(
                {cross_key(a, b): nn.Linear(d_u, n_classes) for a, b in permutations(modalities, 2)}
            )

    def attach_private(self, private: nn.Module) -> None:
        """A private model beside the shared ones (`method.plus_private`), attached after
        every other module is built so that, with or without it, they start from the same
        values; `choice` says which local-protocol predictor the agent uses (0: the shared
        ensemble, 1: the private model, 2: their mean), a buffer so checkpoints carry it."""
        self.private = private
        self.register_buffer("choice", torch.zeros((), dtype=torch.long))

    def slice_width(self) -> int:
        """Width of all the agent's slices side by side (`slices`)."""
        d_u, d_r, d_s = self.split
        return len(self.modalities) * (d_u + d_r + (d_s if self.multimodal else 0))

    @staticmethod
    def slices(out: ParseOutput) -> torch.Tensor:
        """Every slice of an output side by side: u of each modality, r of each, s of each."""
        parts = list(out.unique.values()) + list(out.redundant.values())
        return torch.cat(parts + list(out.synergy.values()), dim=1)

    def block_prefixes(self) -> dict[str, list[str]]:
        blocks = {
            f"enc.{m}": [f"trunks.{m}", f"projectors.{m}.u", f"projectors.{m}.r"]
            for m in self.modalities
        }
        if self.multimodal:
            own = self.s_trunks is not None
            blocks |= {
                f"proj.s.{m}": [f"projectors.{m}.s"] + ([f"s_trunks.{m}"] if own else [])
                for m in self.modalities
            }
        blocks |= {f"head.unique.{m}": [f"unique_heads.{m}"] for m in self.modalities}
        blocks["head.redundant"] = ["redundant_head"]
        if self.discriminator is not None:
            blocks["head.modality"] = ["discriminator"]
        if self.multimodal:
            blocks["synergy"] = ["fusion", "synergy_head"]
        if self.personal is not None:
            blocks["personal"] = ["personal"]
        if self.local_head is not None:
            blocks["local"] = ["local_head"]
        if self.cross is not None:
            blocks["cross"] = ["cross"]
        if self.adversary is not None:
            blocks["adversary"] = ["adversary"]
        if self.private is not None:
            blocks["private"] = ["private"]
        return blocks

    def forward(self, x: dict[str, torch.Tensor]) -> ParseOutput:
        """Heads of the modalities present in `x`; an absent one (a failed sensor) is left out
        as in ParseModel: its fused input is the mean of the present s slices, its unique
        head and its ensemble weight are dropped, and the private head is not used."""
        present = [m for m in self.modalities if m in x]
        if not present:
            raise ValueError(f"none of the model's modalities {list(self.modalities)} is in x")
        unique, redundant, synergy = {}, {}, {}
        for m in present:
            t = self.trunks[m](x[m])
            proj = cast(SliceProjectors, self.projectors[m])
            unique[m], redundant[m] = proj.u(t), proj.r(t)
            if proj.s is not None:
                synergy[m] = proj.s(t if self.s_trunks is None else self.s_trunks[m](x[m]))
        # With `agreement` the label reaches r through no head: r holds what the alignment
        # makes the modalities agree on, and the heads use it as it is.
        r_in = {m: v.detach() for m, v in redundant.items()} if self.agreement else redundant
        heads = slice_heads(self, present, unique, r_in, synergy)
        complete = len(present) == len(self.modalities)
        if self.personal is not None and self.personal.head is not None and complete:
            feats = [unique[m] for m in self.modalities] + [r_in[m] for m in self.modalities]
            feats += [synergy[m] for m in self.modalities if m in synergy]
            heads["personal"] = self.personal.head(torch.cat(feats, dim=1))
        stacked = torch.stack(list(heads.values()), dim=0)  # (H, B, C)
        if self.personal is not None and self.personal.weights is not None:
            pos = [self.head_names.index(h) for h in heads]
            w = torch.softmax(self.personal.weights[pos], dim=0)[:, None, None]
        else:
            w = torch.full((len(heads), 1, 1), 1.0 / len(heads), dtype=stacked.dtype)
            w = w.to(stacked.device)
        if self.ensemble_rule == "probs":
            probs = (w * torch.softmax(stacked, dim=-1)).sum(dim=0)
            ensemble = torch.log(probs.clamp_min(1e-12))
        else:
            ensemble = (w * stacked).sum(dim=0)
        return ParseOutput(ensemble, heads, unique, redundant, synergy)
