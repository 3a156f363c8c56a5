"""Compact raw results: every run of a sweep in one gzipped JSON-lines file.

Run folders hold models.pt (megabytes per run) and are not committed; the numbers behind a
report are. `export_results` writes, for each sweep folder under a folder, one
`NAME.jsonl.gz`: a header line (format, version, the sweep.json) and one line per run
(`{"dir": ..., "results": ...}`: its results.json, history included, without the holder
graphs, which the config rebuilds). `parse-dfl report NAME.jsonl.gz` reads it back and writes
the same tables as from the run folders. The gzip stream carries no time stamp, so an
unchanged export is byte for byte the same file.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from pathlib import Path
from typing import Any

from parse_dfl.errors import UserError
from parse_dfl.experiments.report import EXPORT_SUFFIX, RunRecord, flatten_config
from parse_dfl.experiments.sweep import slug
from parse_dfl.files import atomic_write_files

FORMAT = "parse-dfl-results"
VERSION = 1
DROPPED = ("holder_graphs",)  # bulky and derived from the config: not needed by any table


def compact(results: dict[str, Any]) -> dict[str, Any]:
    """A run's results without what the export leaves out (DROPPED)."""
    return {k: v for k, v in results.items() if k not in DROPPED}


def _read_runs(home: Path, files: list[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """The export lines of one sweep folder's runs, in the order `report.collect` uses."""
    order: dict[str, float] = {}
    sj = home / "sweep.json"
    if sj.is_file():
        try:
            for r in json.loads(sj.read_text()).get("runs", []):
                order.setdefault(Path(r["dir"]).as_posix(), len(order))
        except (json.JSONDecodeError, OSError, KeyError, TypeError):
            pass
    lines: list[dict[str, Any]] = []
    skipped: list[str] = []
    for path in files:
        rel = path.parent.relative_to(home).as_posix()
        try:
            res = json.loads(path.read_text())
            res["config"], res["by_type"], res["mean_accuracy"]  # noqa: B018 (required keys)
        except (json.JSONDecodeError, OSError, KeyError, TypeError) as e:
            skipped.append(f"{rel}: {type(e).__name__}: {e}")
            continue
        lines.append({"dir": rel, "results": compact(res)})
    lines.sort(key=lambda line: (order.get(str(line["dir"]), math.inf), str(line["dir"])))
    return lines, skipped


def export_results(root: str | Path, out_dir: str | Path) -> list[tuple[Path, int]]:
    """One NAME.jsonl.gz in `out_dir` per sweep folder under `root` (a run belongs to the
    deepest sweep folder above it; runs under none go to a file named after `root`).
    Returns (file, runs) for each file written."""
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise UserError(str(root), "not a folder")
    homes = {sj.parent for sj in root.rglob("sweep.json")}
    owned: dict[Path, list[Path]] = {}
    for res in sorted(root.rglob("results.json")):
        above = [h for h in homes if res.is_relative_to(h)]
        home = max(above, key=lambda h: len(h.parts)) if above else root
        owned.setdefault(home, []).append(res)
    if not owned:
        raise UserError(str(root), "no finished runs (no results.json) in this folder")
    written: list[tuple[Path, int]] = []
    files: list[tuple[Path, bytes]] = []
    names: set[str] = set()
    for home in sorted(owned, key=lambda h: h.as_posix()):
        lines, skipped = _read_runs(home, owned[home])
        sweeps = []
        name = home.resolve().name
        if (home / "sweep.json").is_file():
            try:
                doc = json.loads((home / "sweep.json").read_text())
                doc["_path"] = "sweep.json"
                sweeps.append(doc)
                name = str(doc.get("name") or name)
            except (json.JSONDecodeError, OSError):
                skipped.append("sweep.json: unreadable")
        name = slug(name)
        if name in names:  # two sweeps of one name: the second is told apart by its folder
            name = slug(f"{name}-{home.relative_to(root).as_posix()}")
        names.add(name)
        header = {"format": FORMAT, "version": VERSION, "sweeps": sweeps, "skipped": skipped}
        text = "\n".join(json.dumps(x, separators=(",", ":")) for x in [header, *lines]) + "\n"
        path = out_dir / f"{name}{EXPORT_SUFFIX}"
        files.append((path, gzip.compress(text.encode(), compresslevel=9, mtime=0)))
        written.append((path, len(lines)))
    atomic_write_files(files)
    return written


def read_export(path: str | Path) -> tuple[list[dict[str, Any]], list[RunRecord], list[str]]:
    """(sweep.json documents, runs, notes on runs left out) of an export file."""
    path = Path(path)
    try:
        lines = gzip.decompress(path.read_bytes()).decode().splitlines()
        header = json.loads(lines[0]) if lines else {}
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(str(path), f"not a readable export ({type(e).__name__})") from None
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise UserError(str(path), f"not a {FORMAT} export of version {VERSION}")
    runs: list[RunRecord] = []
    skipped = list(header.get("skipped", []))
    for n, line in enumerate(lines[1:], start=2):
        try:
            doc = json.loads(line)
            res = doc["results"]
            runs.append(RunRecord(Path(doc["dir"]), res, flatten_config(res["config"])))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            skipped.append(f"line {n}: {type(e).__name__}: {e}")
    if not runs:
        raise UserError(str(path), "the export holds no runs")
    return list(header.get("sweeps", [])), runs, skipped
