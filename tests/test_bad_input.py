"""Property tests: random configs and random npz files either load or fail with one clean
UserError line; nothing else escapes (no traceback for the user)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parse_dfl.config import Config, build_config, describe_fields
from parse_dfl.data import load_dataset
from parse_dfl.data.partition import partition
from parse_dfl.errors import UserError

KEYS = [key for key, _, _ in describe_fields()]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 500),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(-2, 70), max_size=4),
    st.dictionaries(st.text(max_size=6), st.integers(-3, 40), max_size=3),
)
COUNTS = {"tried": 0, "refused": 0}


@pytest.fixture(autouse=True, scope="module")
def _report_counts():
    """Say how many malformed inputs were thrown and refused (visible with pytest -s)."""
    yield
    print(f"\nbad input: {COUNTS['tried']} inputs tried, {COUNTS['refused']} refused cleanly")


def nested(flat: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                break
            node = nxt
        else:
            node[parts[-1]] = value
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=10)), SCALARS, max_size=5
    )
)
def test_random_configs_validate_or_fail_cleanly(flat: dict[str, object]) -> None:
    COUNTS["tried"] += 1
    try:
        cfg = build_config(nested(flat))
    except UserError as e:
        COUNTS["refused"] += 1
        assert "\n" not in str(e) and e.where
        return
    assert isinstance(cfg, Config)


ARRAYS = st.sampled_from(["ok", "nan", "inf", "short", "int", "1d", "5d", "empty"])


def make_array(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(size=(n, 3, 8)).astype(np.float32)
    if kind == "nan" and n:
        x[0, 0, 0] = np.nan
    elif kind == "inf" and n:
        x[-1, 0, 0] = np.inf
    elif kind == "short":
        x = x[: max(0, n - 1)]
    elif kind == "int":
        x = rng.integers(0, 5, size=(n, 4))
    elif kind == "1d":
        x = rng.normal(size=n)
    elif kind == "5d":
        x = rng.normal(size=(n, 1, 1, 2, 2))
    elif kind == "empty":
        x = np.zeros((0, 3))
    return x


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(0, 30),
    first=ARRAYS,
    second=ARRAYS,
    labels=st.sampled_from(["ok", "negative", "float", "fractional", "short", "missing", "2d"]),
    extra=st.sampled_from([None, "groups", "bad_groups", "typo"]),
    truncate=st.one_of(st.none(), st.floats(0.0, 0.99)),
    seed=st.integers(0, 10_000),
)
def test_random_npz_files_load_or_fail_cleanly(
    tmp_path_factory, n, first, second, labels, extra, truncate, seed
) -> None:
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {
        "x_acc": make_array(first, n, rng),
        "x_gyro": make_array(second, n, rng),
    }
    y = rng.integers(0, 3, size=n)
    if labels == "negative" and n:
        y[0] = -1
    if labels == "float":
        y = y.astype(np.float64)
    if labels == "fractional":
        y = y + 0.5
    if labels == "short":
        y = y[: max(0, n - 2)]
    if labels == "2d":
        y = y.reshape(-1, 1)
    if labels != "missing":
        arrays["y"] = y
    if extra == "groups":
        arrays["groups"] = np.arange(n) % 2
    elif extra == "bad_groups":
        arrays["groups"] = np.zeros(n + 1)
    elif extra == "typo":
        arrays["labels"] = y
    path = tmp_path_factory.mktemp("npz") / "data.npz"
    np.savez(path, **arrays)
    if truncate is not None:
        raw = path.read_bytes()
        path.write_bytes(raw[: int(len(raw) * truncate)])
    cfg = build_config(
        {"data": {"name": "npz", "path": str(path)}, "agents": {"mix": "acc:1,gyro:1"}}
    )
    COUNTS["tried"] += 1
    try:
        ds = load_dataset(cfg.data)
        partition(ds, cfg)
    except UserError as e:
        COUNTS["refused"] += 1
        assert "\n" not in str(e)
        assert e.where in ("data.path", "agents.mix", "data.modalities"), str(e)
        return
    # it loaded: then it really was valid
    assert n > 0
    assert {first, second} <= {"ok", "int", "nan", "inf"}
    assert not ({first, second} & {"nan", "inf"})
    assert labels in ("ok", "float") and truncate is None and extra in (None, "groups")
