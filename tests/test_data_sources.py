"""The five data sources: shapes, classes and groups, the synthetic PID design, npz errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from parse_dfl.config import DataConfig
from parse_dfl.data import SOURCES, load_dataset
from parse_dfl.data.synthetic_pid import SETTINGS
from parse_dfl.errors import UserError


def _skip_unless_available(name: str) -> None:
    ok, why = SOURCES[name].available()
    if not ok:
        pytest.skip(why)


# --- watch -----------------------------------------------------------------------------------


def test_watch_windows_classes_and_subjects() -> None:
    _skip_unless_available("watch")
    ds = load_dataset(DataConfig(name="watch"))
    assert list(ds.modalities) == ["acc", "gyro"]
    n = ds.n_samples
    assert n > 1000
    for m in ("acc", "gyro"):
        assert ds.modalities[m].shape == (n, 3, 100)
        assert ds.modalities[m].dtype == np.float32
        assert ds.kinds[m] == "series"
    assert ds.n_classes == 7
    assert len(ds.class_names) == 7
    assert set(np.unique(ds.labels)) == set(range(7))
    assert ds.labels.dtype == np.int64
    assert ds.groups is not None and ds.groups.dtype == np.int64
    assert len(np.unique(ds.groups)) == 10


def test_watch_raw_windows_match_the_recordings() -> None:
    _skip_unless_available("watch")
    raw = SOURCES["watch"].load(DataConfig(name="watch", window=40, step=40))
    from parse_dfl.data.watch import _data_file

    d = np.load(_data_file(), allow_pickle=True).item()
    first = np.asarray(d["X"][0], dtype=np.float32)
    assert raw.modalities["acc"].shape[1:] == (3, 40)
    np.testing.assert_array_equal(raw.modalities["acc"][0], first[:40, 0:3].T)
    np.testing.assert_array_equal(raw.modalities["gyro"][1], first[40:80, 3:6].T)
    expected = sum(len(x) // 40 for x in d["X"])
    assert raw.n_samples == expected


def test_watch_window_longer_than_every_recording() -> None:
    _skip_unless_available("watch")
    with pytest.raises(UserError) as e:
        load_dataset(DataConfig(name="watch", window=100_000))
    assert e.value.where == "data.window"


# --- mfeat -----------------------------------------------------------------------------------


def test_mfeat_views_and_classes() -> None:
    _skip_unless_available("mfeat")
    all_views = ["fou", "fac", "kar", "pix", "zer", "mor"]
    ds = load_dataset(DataConfig(name="mfeat", modalities=all_views, standardize=False))
    assert ds.n_samples == 2000
    assert ds.n_classes == 10
    assert np.bincount(ds.labels).tolist() == [200] * 10
    np.testing.assert_array_equal(ds.labels, np.arange(2000) // 200)
    dims = {"fou": 76, "fac": 216, "kar": 64, "zer": 47, "mor": 6}
    for m, d in dims.items():
        assert ds.input_shape(m) == (d,)
        assert ds.kinds[m] == "vector"
    assert ds.input_shape("pix") == (1, 16, 15)
    assert ds.kinds["pix"] == "image"
    pix = ds.modalities["pix"]
    assert pix.min() == 0 and pix.max() == 6
    assert ds.groups is None
    # default pair
    assert list(load_dataset(DataConfig(name="mfeat")).modalities) == ["fou", "zer"]


def test_mfeat_pix_orientation() -> None:
    """A '1' is a tall stroke: its ink spreads over more rows than columns (16 rows x 15 cols)."""
    _skip_unless_available("mfeat")
    ds = load_dataset(DataConfig(name="mfeat", modalities=["pix"], standardize=False))
    ones = ds.modalities["pix"][ds.labels == 1, 0].mean(axis=0)  # (16, 15)
    rows_inked = (ones.mean(axis=1) > 1.0).sum()
    cols_inked = (ones.mean(axis=0) > 1.0).sum()
    assert rows_inked >= 12
    assert cols_inked < rows_inked


# --- basic-motions ---------------------------------------------------------------------------


def test_basic_motions() -> None:
    _skip_unless_available("basic-motions")
    ds = load_dataset(DataConfig(name="basic-motions", standardize=False))
    assert ds.modalities["acc"].shape == (80, 3, 100)
    assert ds.modalities["gyro"].shape == (80, 3, 100)
    assert ds.n_classes == 4
    assert ds.class_names == ["Standing", "Running", "Walking", "Badminton"]
    assert np.bincount(ds.labels).tolist() == [20, 20, 20, 20]
    # Standing moves less than Running.
    energy = ds.modalities["acc"].std(axis=2).mean(axis=1)
    assert energy[ds.labels == 0].mean() < energy[ds.labels == 1].mean()


# --- synthetic-pid ---------------------------------------------------------------------------

_PID = {"n_samples": 2000, "dim": 32, "n_classes": 4, "noise": 1.0}


def _pid(setting: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ds = load_dataset(DataConfig(name="synthetic-pid", setting=setting, **_PID))
    return ds.modalities["a"], ds.modalities["b"], ds.labels


def _test_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression

    half = len(y) // 2
    model = LogisticRegression(max_iter=500).fit(x[:half], y[:half])
    return float(model.score(x[half:], y[half:]))


def _product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise products a_i * b_j: a linear model on them can read a joint code of a and b."""
    return np.einsum("ni,nj->nij", a, b).reshape(len(a), -1)


@pytest.mark.parametrize("setting", SETTINGS)
def test_synthetic_pid_information_pattern(setting: str) -> None:
    pytest.importorskip("sklearn")
    a, b, y = _pid(setting)
    assert a.shape == b.shape == (2000, 32)
    chance, high = 0.35, 0.85  # 4 classes: chance is 0.25
    acc_a, acc_b = _test_accuracy(a, y), _test_accuracy(b, y)
    acc_ab = _test_accuracy(np.concatenate([a, b], axis=1), y)
    if setting == "redundancy":
        assert acc_a > high and acc_b > high and acc_ab > high
    elif setting == "uniqueness0":
        assert acc_a > high and acc_b < chance and acc_ab > high
    elif setting == "uniqueness1":
        assert acc_b > high and acc_a < chance and acc_ab > high
    else:  # synergy: nothing from either alone, not even linearly from both ...
        assert acc_a < chance and acc_b < chance and acc_ab < chance
        # ... but a model of their interaction recovers it.
        assert _test_accuracy(np.concatenate([a, b, _product(a, b)], axis=1), y) > 0.8


def test_synthetic_pid_is_deterministic_and_settings_share_inputs() -> None:
    a1, b1, y1 = _pid("redundancy")
    a2, b2, _ = _pid("redundancy")
    a3, b3, y3 = _pid("synergy")
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)
    np.testing.assert_array_equal(a1, a3)
    assert not np.array_equal(y1, y3)
    other = load_dataset(DataConfig(name="synthetic-pid", n_samples=2000, dim=32, noise=3.0))
    assert not np.allclose(other.modalities["a"], a1)


def test_synthetic_pid_combined_setting_is_mixed_radix() -> None:
    _, _, r = _pid("redundancy")
    _, _, s = _pid("synergy")
    ds = load_dataset(DataConfig(name="synthetic-pid", setting="redundancy+synergy", **_PID))
    assert ds.n_classes == 16
    assert len(ds.class_names) == 16
    np.testing.assert_array_equal(ds.labels, r * 4 + s)
    assert ds.class_names[ds.labels[0]] == f"redundancy={r[0]}+synergy={s[0]}"


@pytest.mark.parametrize("setting", ["nonsense", "redundancy+redundancy", "synergy+", ""])
def test_synthetic_pid_bad_setting(setting: str) -> None:
    with pytest.raises(UserError) as e:
        load_dataset(DataConfig(name="synthetic-pid", setting=setting))
    assert e.value.where == "data.setting"


# --- npz -------------------------------------------------------------------------------------


def _valid_arrays(n: int = 30) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_acc": rng.normal(size=(n, 3, 20)),
        "x_img": rng.normal(size=(n, 1, 8, 8)).astype(np.float32),
        "x_tab": rng.normal(size=(n, 5)),
        "y": np.arange(n) % 3,
        "groups": np.arange(n) // 10,
        "class_names": np.array(["sit", "walk", "run"]),
    }


def _npz_cfg(path: Path | str | None, **kw: object) -> DataConfig:
    return DataConfig(name="npz", path=None if path is None else str(path), **kw)


def test_npz_round_trip(tmp_path: Path) -> None:
    arrays = _valid_arrays()
    path = tmp_path / "mine.npz"
    np.savez(path, **arrays)
    ds = load_dataset(_npz_cfg(path, standardize=False))
    assert list(ds.modalities) == ["acc", "img", "tab"]
    assert ds.kinds == {"acc": "series", "img": "image", "tab": "vector"}
    for m in ("acc", "img", "tab"):
        assert ds.modalities[m].dtype == np.float32
        np.testing.assert_allclose(ds.modalities[m], arrays[f"x_{m}"], rtol=1e-6)
    np.testing.assert_array_equal(ds.labels, arrays["y"])
    np.testing.assert_array_equal(ds.groups, arrays["groups"])
    assert ds.class_names == ["sit", "walk", "run"]
    assert ds.n_classes == 3

    sel = load_dataset(_npz_cfg(path, modalities=["tab", "acc"]))
    assert list(sel.modalities) == ["tab", "acc"]
    assert abs(float(sel.modalities["tab"].mean())) < 1e-5


def test_npz_minimal_file_counts_classes_from_labels(tmp_path: Path) -> None:
    path = tmp_path / "min.npz"
    np.savez_compressed(path, x_v=np.ones((6, 2)), y=np.array([0, 1, 4, 1, 0, 4]))
    ds = load_dataset(_npz_cfg(path))
    assert ds.n_classes == 5
    assert ds.groups is None
    assert ds.class_names == []
    # whole-number float labels (as pandas often writes them) are accepted
    np.savez(path, x_v=np.ones((4, 2)), y=np.array([0.0, 1.0, 2.0, 1.0]))
    ds = load_dataset(_npz_cfg(path))
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 1, 2, 1]


def _write(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


def _bad_files(tmp_path: Path) -> dict[str, Path | None]:
    ok = _valid_arrays()
    cases: dict[str, Path | None] = {"no path": None, "missing": tmp_path / "nope.npz"}

    text = tmp_path / "text.npz"
    text.write_text("this is not an archive\n")
    cases["not npz"] = text

    good = tmp_path / "good.npz"
    np.savez(good, **ok)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["truncated"] = truncated
    tail_cut = tmp_path / "tail_cut.npz"
    tail_cut.write_bytes(good.read_bytes()[:-10])
    cases["tail cut"] = tail_cut
    zero = tmp_path / "zero.npz"
    zero.write_bytes(b"")
    cases["zero bytes"] = zero

    npy = tmp_path / "single.npy"
    np.save(npy, ok["x_tab"])
    cases["npy"] = npy
    cases["directory"] = tmp_path

    def variant(name: str, **changes: np.ndarray | None) -> None:
        arrays = {k: v for k, v in ok.items() if k not in changes}
        arrays.update({k: v for k, v in changes.items() if v is not None})
        sub = tmp_path / name
        sub.mkdir()
        cases[name] = _write(sub, **arrays)

    variant("no x", x_acc=None, x_img=None, x_tab=None)
    variant("no y", y=None)
    variant("float labels", y=np.linspace(0, 2, 30))
    variant("string labels", y=np.array(["a"] * 30))
    variant("negative labels", y=np.arange(30) % 3 - 1)
    variant("2-D labels", y=(np.arange(30) % 3).reshape(30, 1))
    variant("sample mismatch", x_tab=np.zeros((29, 5)))
    variant("NaN", x_tab=np.full((30, 5), np.nan))
    variant("inf", x_acc=np.full((30, 3, 20), np.inf))
    variant("beyond float32", x_tab=np.full((30, 5), 1e300))
    variant("1-D modality", x_tab=np.zeros(30))
    variant("5-D modality", x_tab=np.zeros((30, 1, 1, 1, 1)))
    variant("string modality", x_tab=np.array([["a"] * 5] * 30))
    variant("unknown key", labels=np.zeros(30, dtype=int))
    variant("bad modality name", **{"x_a+b": np.zeros((30, 2))})
    variant("float groups", groups=np.zeros(30))
    variant("short groups", groups=np.zeros(10, dtype=int))
    variant("too few class names", class_names=np.array(["sit", "walk"]))
    variant("one class", y=np.zeros(30, dtype=int), class_names=None)
    variant("empty", x_acc=None, x_img=None, x_tab=np.zeros((0, 5)), y=np.zeros(0, dtype=int))

    obj = tmp_path / "object.npz"
    np.savez(obj, x_tab=np.zeros((3, 2)), y=np.array([0, 1, None], dtype=object))
    cases["object array"] = obj
    return cases


def test_npz_bad_files_raise_user_error_on_data_path(tmp_path: Path) -> None:
    cases = _bad_files(tmp_path)
    assert len(cases) > 20
    for case, path in cases.items():
        with pytest.raises(UserError) as e:
            load_dataset(_npz_cfg(path))
        assert e.value.where == "data.path", f"{case}: {e.value}"
        assert e.value.problem, case


def test_npz_unknown_modality_is_a_modalities_error(tmp_path: Path) -> None:
    path = _write(tmp_path, **_valid_arrays())
    with pytest.raises(UserError) as e:
        load_dataset(_npz_cfg(path, modalities=["gyro"]))
    assert e.value.where == "data.modalities"


# --- registry --------------------------------------------------------------------------------


def test_sources_registered_and_cheaply_available() -> None:
    for name in ("watch", "mfeat", "basic-motions", "synthetic-pid", "npz"):
        src = SOURCES[name]
        ok, why = src.available()
        assert isinstance(ok, bool) and isinstance(why, str)
        assert ok or why
        assert src.description
    assert SOURCES["synthetic-pid"].available() == (True, "")
    assert SOURCES["npz"].available() == (True, "")
