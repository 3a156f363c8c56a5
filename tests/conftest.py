"""Shared fixtures: small configs that run in seconds."""

from __future__ import annotations

import pytest
import torch

from parse_dfl.config import Config, load_config


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


def quick_config(*overrides: str) -> Config:
    """configs/quick.yaml with overrides: basic-motions, 6 agents, a few rounds."""
    return load_config("configs/quick.yaml", list(overrides))
