"""Shared fixtures: small configs that run in seconds."""

from __future__ import annotations

import os

import pytest
import torch

from parse_dfl.config import Config, load_config


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    """One thread by default; PARSE_DFL_TEST_THREADS and PARSE_DFL_TEST_ONEDNN=0 rerun the
    suite on other kernels (the engine-equivalence tests must pass on any of them)."""
    torch.set_num_threads(int(os.environ.get("PARSE_DFL_TEST_THREADS", "1")))
    torch.backends.mkldnn.enabled = os.environ.get("PARSE_DFL_TEST_ONEDNN", "1") != "0"


def quick_config(*overrides: str) -> Config:
    """configs/quick.yaml with overrides: basic-motions, 6 agents, a few rounds."""
    return load_config("configs/quick.yaml", list(overrides))
