"""Model shapes for every agent type and fusion operator; blocks cover every parameter."""

from __future__ import annotations

import pytest
import torch

from parse_dfl.methods.alignment import info_nce, separation
from parse_dfl.models.blocks import param_blocks
from parse_dfl.models.parse import ParseModel

KINDS = {"acc": "series", "gyro": "series", "img": "image", "vec": "vector"}
SHAPES = {"acc": (3, 40), "gyro": (3, 40), "img": (1, 16, 15), "vec": (12,)}


def batch(mods: tuple[str, ...], n: int = 5) -> dict[str, torch.Tensor]:
    return {m: torch.randn(n, *SHAPES[m]) for m in mods}


@pytest.mark.parametrize("fusion", ["mean", "concat", "gated", "attention"])
@pytest.mark.parametrize(
    "mods", [("acc",), ("img",), ("vec",), ("acc", "gyro"), ("acc", "img", "vec")]
)
def test_output_shapes(fusion: str, mods: tuple[str, ...]) -> None:
    model = ParseModel(mods, KINDS, SHAPES, width=8, split=(4, 6, 5), n_classes=7, fusion=fusion)
    out = model(batch(mods))
    assert out.ensemble.shape == (5, 7)
    expected = (
        {f"unique.{m}" for m in mods} | {"redundant"} | ({"synergy"} if len(mods) > 1 else set())
    )
    assert set(out.heads) == expected
    for m in mods:
        assert out.unique[m].shape == (5, 4)
        assert out.redundant[m].shape == (5, 6)
        assert out.synergy[m].shape == (5, 5)
    blocks = param_blocks(model)
    assert ("synergy" in blocks) == (len(mods) > 1)
    covered = [n for names in blocks.values() for n in names]
    assert sorted(covered) == sorted(n for n, _ in model.named_parameters())


def test_ensemble_of_probabilities_is_a_log_distribution() -> None:
    model = ParseModel(("acc", "gyro"), KINDS, SHAPES, 8, (4, 4, 4), 3, ensemble="probs")
    out = model(batch(("acc", "gyro")))
    assert torch.allclose(out.ensemble.exp().sum(dim=-1), torch.ones(5), atol=1e-5)


def test_info_nce_is_lower_for_aligned_slices() -> None:
    torch.manual_seed(0)
    r_a = torch.randn(64, 16)
    r_b = r_a + 0.1 * torch.randn(64, 16)
    hard = [torch.randn(64, 16), torch.randn(64, 12)]
    aligned = info_nce(r_a, r_b, hard, tau=0.2)
    shuffled = info_nce(r_a, r_b[torch.randperm(64)], hard, tau=0.2)
    assert aligned < shuffled - 1.0


def test_separation_is_zero_for_orthogonal_and_one_for_equal() -> None:
    r = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert separation(r, r.flip(1)).item() == pytest.approx(0.0)
    assert separation(r, 2 * r).item() == pytest.approx(1.0)
