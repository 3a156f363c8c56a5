"""The usual multimodal model: encoders -> one shared embedding (mean) -> one classifier.

Used by the baselines. With `modalities` = every modality of the dataset (dsgd-task), a
modality the agent lacks is fed as zeros (`missing="zero"`) or left out of the mean
(`missing="skip"`), so all agents have the same shape and can average every parameter;
otherwise only the agent's own encoders exist.

A failed sensor at test time: `held` (default None: not known) names the modalities the agent
actually holds. A held modality absent from the input is left out of the mean, never
zero-filled; an absent modality the agent does not hold follows `missing` as in training. With
`held` = None every absent modality follows `missing` (the behaviour during training).
parse_dfl.diagnostics.missing sets `held` to the agent's modalities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from parse_dfl.models.encoders import build_encoder, build_head


class FusionClassifier(nn.Module):
    def __init__(
        self,
        modalities: tuple[str, ...],
        kinds: Mapping[str, str],
        input_shapes: Mapping[str, tuple[int, ...]],
        width: int,
        embed_dim: int,
        n_classes: int,
        head_hidden: int = 0,
        missing: str = "zero",
        held: Sequence[str] | None = None,
        encoder: str = "auto",
    ) -> None:
        super().__init__()
        self.modalities = modalities
        self.missing = missing
        self.held: frozenset[str] | None = None if held is None else frozenset(held)
        self.input_shapes = input_shapes
        self.encoders = nn.ModuleDict(
            {
                m: build_encoder(kinds[m], input_shapes[m], width, embed_dim, encoder)
                for m in modalities
            }
        )
        self.classifier = build_head(embed_dim, n_classes, head_hidden)

    def block_prefixes(self) -> dict[str, list[str]]:
        blocks = {f"enc.{m}": [f"encoders.{m}"] for m in self.modalities}
        blocks["classifier"] = ["classifier"]
        return blocks

    def embed(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = next(iter(x.values())).shape[0]
        ref = next(iter(x.values()))
        feats = []
        for m in self.modalities:
            xm = x.get(m)
            if xm is None:  # a modality this agent does not hold: zero-filled or skipped
                if self.missing == "skip" or (self.held is not None and m in self.held):
                    continue  # (a held modality that is absent: a failed sensor, left out)
                xm = ref.new_zeros((batch, *self.input_shapes[m]))
            feats.append(self.encoders[m](xm))
        if not feats:
            raise ValueError(f"none of the model's modalities {list(self.modalities)} is in x")
        return torch.stack(feats, dim=1).mean(dim=1)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.embed(x))
