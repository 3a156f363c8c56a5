"""The PARSE model of one agent, top to bottom.

x_m --E_m--> h_m = [u_m | r_m | s_m]          feature fission, one encoder per modality
u_m -> g_m            unique head, one per modality
mean_m r_m -> g_r     redundant head (a unimodal agent uses its one r_m)
Fuse({s_m}) -> g_s    synergy head, only with two or more modalities
prediction = ensemble of the available heads (mean of logits, or of probabilities)

A modality missing from the input at test time (a failed sensor) is left out: see forward.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from parse_dfl.models.encoders import build_encoder, build_head
from parse_dfl.models.fusion import build_fusion


@dataclass
class ParseOutput:
    """Everything the loss needs: the ensemble, each head's logits, and each modality's slices."""

    ensemble: torch.Tensor
    heads: dict[str, torch.Tensor]
    unique: dict[str, torch.Tensor]
    redundant: dict[str, torch.Tensor]
    synergy: dict[str, torch.Tensor]


def slice_heads(
    model: Any,
    present: list[str],
    unique: dict[str, torch.Tensor],
    redundant: dict[str, torch.Tensor],
    synergy: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The heads' logits from the slices of the modalities `present`: one unique head per
    modality, the redundant head on the mean r, and (with two or more present) the synergy
    head on the fused s. Fusion modules expect every modality: an absent one is filled with
    the mean of the present s slices. `model` has `modalities`, `multimodal`, `unique_heads`,
    `redundant_head` and, when multimodal, `fusion` and `synergy_head` (ParseModel and
    ParsePlusModel)."""
    mods: tuple[str, ...] = model.modalities
    heads = {f"unique.{m}": model.unique_heads[m](unique[m]) for m in present}
    r = torch.stack([redundant[m] for m in present], dim=1).mean(dim=1)
    heads["redundant"] = model.redundant_head(r)
    if model.multimodal and len(present) >= 2:
        if len(present) == len(mods):
            s_in = torch.stack([synergy[m] for m in mods], dim=1)
        else:
            s_mean = torch.stack([synergy[m] for m in present], dim=1).mean(dim=1)
            s_in = torch.stack([synergy.get(m, s_mean) for m in mods], dim=1)
        heads["synergy"] = model.synergy_head(model.fusion(s_in))
    return heads


class ParseModel(nn.Module):
    def __init__(
        self,
        modalities: tuple[str, ...],
        kinds: Mapping[str, str],
        input_shapes: Mapping[str, tuple[int, ...]],
        width: int,
        split: tuple[int, int, int],
        n_classes: int,
        fusion: str = "mean",
        head_hidden: int = 0,
        ensemble: str = "logits",
        encoder: str = "auto",
    ) -> None:
        super().__init__()
        self.modalities = modalities
        self.split = tuple(split)
        self.ensemble_rule = ensemble
        d_u, d_r, d_s = split
        dim = d_u + d_r + d_s
        self.encoders = nn.ModuleDict(
            {m: build_encoder(kinds[m], input_shapes[m], width, dim, encoder) for m in modalities}
        )
        self.unique_heads = nn.ModuleDict(
            {m: build_head(d_u, n_classes, head_hidden) for m in modalities}
        )
        self.redundant_head = build_head(d_r, n_classes, head_hidden)
        self.multimodal = len(modalities) >= 2
        if self.multimodal:
            self.fusion = build_fusion(fusion, len(modalities), d_s)
            self.synergy_head = build_head(d_s, n_classes, head_hidden)

    def block_prefixes(self) -> dict[str, list[str]]:
        blocks = {f"enc.{m}": [f"encoders.{m}"] for m in self.modalities}
        blocks |= {f"head.unique.{m}": [f"unique_heads.{m}"] for m in self.modalities}
        blocks["head.redundant"] = ["redundant_head"]
        if self.multimodal:
            blocks["synergy"] = ["fusion", "synergy_head"]
        return blocks

    def forward(self, x: dict[str, torch.Tensor]) -> ParseOutput:
        """Heads of the modalities present in `x` (normally all of the agent's).

        A modality of the agent that is absent from `x` (a failed sensor at test time) is left
        out: no unique head for it, the redundant head sees the mean r of the present
        modalities, and the synergy head runs only with two or more present (the fused input
        of an absent modality is filled with the mean of the present s slices, which for mean
        fusion is exactly the mean of the present ones). With every modality present this is
        the usual forward pass, operation for operation.
        """
        d_u, d_r, _ = self.split
        present = [m for m in self.modalities if m in x]
        if not present:
            raise ValueError(f"none of the model's modalities {list(self.modalities)} is in x")
        unique, redundant, synergy = {}, {}, {}
        for m in present:
            h = self.encoders[m](x[m])
            unique[m], redundant[m], synergy[m] = (
                h[:, :d_u],
                h[:, d_u : d_u + d_r],
                h[:, d_u + d_r :],
            )
        heads = slice_heads(self, present, unique, redundant, synergy)
        stacked = torch.stack(list(heads.values()), dim=0)
        if self.ensemble_rule == "probs":
            ensemble = torch.log(torch.softmax(stacked, dim=-1).mean(dim=0).clamp_min(1e-12))
        else:
            ensemble = stacked.mean(dim=0)
        return ParseOutput(ensemble, heads, unique, redundant, synergy)
