"""Objectives that make PARSE-plus's slices differ: dependence penalties and a modality
discriminator.

PARSE's slices are blocks of one linear output, so nothing stops u, r and s from carrying the
same thing (docs/results.md, "What the slices hold"). These terms push them apart:

- `cross_correlation(u, r)`: mean squared entry of the batch cross-correlation matrix of two
  slices (a linear-kernel HSIC on standardised units). Zero iff every unit of u is linearly
  uncorrelated with every unit of r over the batch.
- `hsic(u, r)`: normalised HSIC with Gaussian kernels (bandwidth: the mean squared pairwise
  distance, held constant): also sees non-linear dependence.
- `predictability(pred, u)` and `predictor_fit(pred, u)`: how well a predictor reads u from
  another modality (squared correlation per unit), and the predictor's own training loss.
- `modality_loss(logits, index)`: cross-entropy of a discriminator asked which modality a
  unique slice came from (ShaSpec's "specific" features must identify their modality).

Everything is deterministic, free of data-dependent Python control flow and of in-place
updates, so the batched engine can vmap a loss built from them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-5


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Each unit centred and scaled to unit variance over the batch (constant units stay 0)."""
    x = x - x.mean(dim=0, keepdim=True)
    return x / (x.pow(2).mean(dim=0, keepdim=True) + EPS).sqrt()


def cross_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared cross-correlation between the units of `a` (B, da) and `b` (B, db)."""
    c = _standardise(a).T @ _standardise(b) / a.shape[0]
    return c.pow(2).mean()


def _gram(x: torch.Tensor) -> torch.Tensor:
    """Centred Gaussian Gram matrix, bandwidth = mean squared distance (not differentiated)."""
    sq = (x.unsqueeze(0) - x.unsqueeze(1)).pow(2).sum(dim=-1)
    width = sq.detach().mean() + EPS
    k = torch.exp(-sq / width)
    return k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()


def hsic(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Normalised HSIC (kernel CKA) of two slices of the same samples, in [0, 1]."""
    ka, kb = _gram(a), _gram(b)
    num = (ka * kb).sum()
    den = ((ka * ka).sum() * (kb * kb).sum()).sqrt() + EPS
    return num / den


DEPENDENCE = {"xcov": cross_correlation, "hsic": hsic}


def predictability(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over units of the squared batch correlation between each unit of `target` (B, d)
    and its prediction `pred` (B, d): 0 when no unit can be read from the predictor's input,
    1 when every unit is an exact affine image of it."""
    return (_standardise(pred) * _standardise(target)).mean(dim=0).pow(2).mean()


def predictor_fit(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error of `pred` against the standardised, constant `target`: trains the
    predictor alone, on a target whose scale the encoder cannot game."""
    return F.mse_loss(pred, _standardise(target).detach())


def modality_loss(logits: torch.Tensor, index: int) -> torch.Tensor:
    """Cross-entropy of a modality discriminator's `logits` (B, K) for true modality `index`."""
    target = torch.full(logits.shape[:1], index, dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)
