"""UEA BasicMotions: smartwatch accelerometer and gyroscope recordings of four activities.

Read from the archive's .ts files shipped in this package (`parse_dfl/data/files/
BasicMotions_TRAIN.ts.gz` then `_TEST.ts.gz`, 40 + 40 samples; their provenance and terms are
in `files/README.md`): they are 170 kB, while aeon, which also ships them, pulls about 305 MB.
Each sample is 6 dimensions of 100 time steps (10 s at 10 Hz): dimensions 0-2 accelerometer,
3-5 gyroscope.

Modalities: "acc" and "gyro", each (80, 3, 100). Labels follow the @classLabel order of the
header: Standing 0, Running 1, Walking 2, Badminton 3.
"""

from __future__ import annotations

import gzip
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING

import numpy as np

from parse_dfl.data.base import MultimodalDataset, Source, register
from parse_dfl.errors import UserError

if TYPE_CHECKING:
    from parse_dfl.config import DataConfig

_SPLITS = ("TRAIN", "TEST")


def _file(split: str) -> Traversable:
    return files("parse_dfl.data").joinpath("files", f"BasicMotions_{split}.ts.gz")


def available() -> tuple[bool, str]:
    missing = [s for s in _SPLITS if not _file(s).is_file()]
    if missing:
        return False, f"BasicMotions_{missing[0]}.ts.gz is missing from this installation"
    return True, ""


def parse_ts(text: str, where: str) -> tuple[np.ndarray, list[str], list[str]]:
    """Parse an equal-length multivariate .ts file: (samples (N, C, T), labels, class names)."""
    class_names: list[str] = []
    in_data = False
    rows: list[list[list[float]]] = []
    labels: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if line.lower().startswith("@classlabel"):
                parts = line.split()
                if len(parts) >= 2 and parts[1].lower() == "true":
                    class_names = parts[2:]
            elif line.lower().startswith("@data"):
                in_data = True
            continue
        *dims, label = line.split(":")
        try:
            rows.append([[float(v) for v in d.split(",")] for d in dims])
        except ValueError as e:
            raise UserError(where, f"line {lineno} of the .ts file is not numeric: {e}") from None
        labels.append(label.strip())
    if not rows:
        raise UserError(where, "the .ts file has no data lines")
    try:
        x = np.asarray(rows, dtype=np.float32)
    except ValueError:
        raise UserError(where, "the .ts file has series of unequal length") from None
    return x, labels, class_names


def load(cfg: DataConfig) -> MultimodalDataset:
    ok, why = available()
    if not ok:
        raise UserError("data.name", why)
    xs: list[np.ndarray] = []
    names: list[str] = []
    class_names: list[str] = []
    for split in _SPLITS:
        text = gzip.decompress(_file(split).read_bytes()).decode("utf-8")
        x, y, cn = parse_ts(text, "data.name")
        xs.append(x)
        names.extend(y)
        class_names = class_names or cn
    if not class_names:
        class_names = sorted(set(names))
    index = {c: i for i, c in enumerate(class_names)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise UserError("data.name", f"BasicMotions has labels {unknown} not in its @classLabel")
    x = np.concatenate(xs)  # (80, 6, 100)
    return MultimodalDataset(
        name="basic-motions",
        modalities={
            "acc": np.ascontiguousarray(x[:, 0:3]),
            "gyro": np.ascontiguousarray(x[:, 3:6]),
        },
        kinds={"acc": "series", "gyro": "series"},
        labels=np.asarray([index[n] for n in names], dtype=np.int64),
        n_classes=len(class_names),
        groups=None,
        class_names=class_names,
    )


SOURCE = register(
    Source(
        name="basic-motions",
        load=load,
        available=available,
        description="UEA BasicMotions (shipped): 80 smartwatch recordings, 4 activities, "
        "accelerometer (acc) and gyroscope (gyro), 100 steps at 10 Hz",
        default_modalities=("acc", "gyro"),
    )
)
