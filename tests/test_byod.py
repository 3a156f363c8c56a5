"""Bring your own data without traps: the series layout is explicit, relative paths are read
against the file that names them, and a report lists only the data keys its source reads."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from parse_dfl.cli import main
from parse_dfl.config import DataConfig, load_config, source_of
from parse_dfl.data import SOURCES, load_dataset
from parse_dfl.experiments.sweep import load_sweep

N = 40


def _write(path: Path, **arrays: np.ndarray) -> Path:
    """An .npz of N samples, two classes; by default one vector modality `v`."""
    if not arrays:
        arrays = {"x_v": np.random.default_rng(0).normal(size=(N, 3))}
    np.savez(path, y=np.arange(N) % 2, **arrays)  # type: ignore[arg-type]
    return path


def _load(path: Path, **kw: object) -> dict[str, np.ndarray]:
    cfg = DataConfig(name="npz", path=str(path), standardize=False, **kw)  # type: ignore[arg-type]
    return load_dataset(cfg).modalities


# --- data.layout -----------------------------------------------------------------------------


def test_channels_last_series_is_moved_to_channels_first(tmp_path: Path) -> None:
    raw = np.random.default_rng(1).normal(size=(N, 100, 3)).astype(np.float32)  # (N, T, C)
    path = _write(tmp_path / "acc.npz", x_acc=raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right layout: no warning
        x = _load(path, layout="channels-last")["acc"]
    assert x.shape == (N, 3, 100)
    np.testing.assert_array_equal(x[5, 2, :], raw[5, :, 2])  # channel 2 over time


def test_a_series_read_the_wrong_way_round_is_warned_about(tmp_path: Path) -> None:
    path = _write(tmp_path / "acc.npz", x_acc=np.zeros((N, 100, 3), np.float32))
    with pytest.warns(UserWarning, match=r"read as 100 channels of 3 time steps.*channels-last"):
        x = _load(path)["acc"]  # default: channels-first, today's reading
    assert x.shape == (N, 100, 3)
    path = _write(tmp_path / "acc2.npz", x_acc=np.zeros((N, 3, 100), np.float32))
    with pytest.warns(UserWarning, match=r"read as 100 channels of 3 time steps.*channels-first"):
        _load(path, layout="channels-last")


def test_images_follow_the_layout_and_vectors_ignore_it(tmp_path: Path) -> None:
    img = np.random.default_rng(2).normal(size=(N, 8, 6, 1)).astype(np.float32)  # (N, H, W, C)
    vec = np.ones((N, 4), np.float32)
    path = _write(tmp_path / "img.npz", x_img=img, x_vec=vec)
    x = _load(path, layout="channels-last")
    assert x["img"].shape == (N, 1, 8, 6) and x["vec"].shape == (N, 4)
    np.testing.assert_array_equal(x["img"][3, 0], img[3, :, :, 0])
    with pytest.warns(UserWarning, match="8 channels of 1 columns"):
        _load(path)


def test_a_bad_layout_names_the_field(capsys: pytest.CaptureFixture) -> None:
    assert main(["pid", "configs/quick.yaml", "--set", "data.layout=time-first"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("parse-dfl: error: data.layout:")


# --- relative paths --------------------------------------------------------------------------


def test_a_relative_data_path_is_read_against_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "project").mkdir()
    data = _write(tmp_path / "project" / "mine.npz")
    (tmp_path / "project" / "cfg.yaml").write_text("data:\n  name: npz\n  path: mine.npz\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config("../project/cfg.yaml")
    assert cfg.data.path == str(data)
    assert load_dataset(cfg.data).n_samples == N
    # --set stays relative to the working directory (and is stored absolute too)
    cfg = load_config("../project/cfg.yaml", ["data.path=here.npz"])
    assert cfg.data.path == str(elsewhere / "here.npz")
    # absolute and home paths are left as they are
    assert load_config(None, ["data.path=/abs/x.npz"]).data.path == "/abs/x.npz"
    assert load_config(None, ["data.path=~/x.npz"]).data.path == "~/x.npz"


def test_sweep_paths_are_read_against_the_file_that_names_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for folder in ("configs", "sweeps", "cwd"):
        (tmp_path / folder).mkdir()
    base_data = _write(tmp_path / "configs" / "base.npz")
    grid_data = _write(tmp_path / "sweeps" / "grid.npz")
    (tmp_path / "configs" / "base.yaml").write_text(
        "data: {name: npz, path: base.npz}\nagents: {mix: 'v:2'}\n"
    )
    sweep = tmp_path / "sweeps" / "s.yaml"
    sweep.write_text(
        "base: ../configs/base.yaml\nruns:\n  - {}\n  - {data.path: grid.npz}\ngrid:\n  seed: [0]\n"
    )
    monkeypatch.chdir(tmp_path / "cwd")
    runs = load_sweep(Path("../sweeps/s.yaml")).runs
    assert [r.config.data.path for r in runs] == [str(base_data), str(grid_data)]


def test_pid_of_a_config_elsewhere_finds_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 100)
    a = y[:, None] * 3.0 + rng.normal(size=(200, 2))
    np.savez(tmp_path / "two.npz", x_a=a, x_b=a + rng.normal(size=(200, 2)), y=y)
    (tmp_path / "cfg.yaml").write_text("data: {name: npz, path: two.npz}\n")
    monkeypatch.chdir(Path(__file__).parent)  # not where the config is
    assert main(["pid", str(tmp_path / "cfg.yaml"), "--clusters", "2", "--shuffles", "1"]) == 0
    assert "PID of (a, b)" in capsys.readouterr().out


# --- which data keys a source reads ----------------------------------------------------------


def test_every_source_prefix_in_the_data_section_names_a_source() -> None:
    for key, info in DataConfig.model_fields.items():
        owner = source_of(info.description or "")
        assert owner is None or owner in SOURCES, (key, owner)
    assert {"path", "layout"} <= set(DataConfig.keys_for("npz"))
    assert "window" not in DataConfig.keys_for("npz")
    assert {"window", "step", "standardize", "modalities"} <= set(DataConfig.keys_for("watch"))
    assert "path" not in DataConfig.keys_for("watch")
    assert set(DataConfig.keys_for("mfeat")) == {"name", "modalities", "standardize"}
