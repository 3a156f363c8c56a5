"""aeon's BasicMotions: smartwatch accelerometer and gyroscope recordings of four activities.

Read from the .ts files shipped with aeon (`aeon/datasets/data/BasicMotions/BasicMotions_TRAIN.ts`
then `_TEST.ts`, 40 + 40 samples; aeon itself is not imported, its import is slow). Each sample
is 6 dimensions of 100 time steps (10 s at 10 Hz): dimensions 0-2 accelerometer, 3-5 gyroscope.

Modalities: "acc" and "gyro", each (80, 3, 100). Labels follow the @classLabel order of the
header: Standing 0, Running 1, Walking 2, Badminton 3.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from parse_dfl.data.base import MultimodalDataset, Source, register
from parse_dfl.errors import UserError

if TYPE_CHECKING:
    from parse_dfl.config import DataConfig

_SPLITS = ("TRAIN", "TEST")


def _folder() -> Path | None:
    spec = importlib.util.find_spec("aeon")
    if spec is None or not spec.submodule_search_locations:
        return None
    for pkg in spec.submodule_search_locations:
        folder = Path(pkg) / "datasets" / "data" / "BasicMotions"
        if all((folder / f"BasicMotions_{s}.ts").is_file() for s in _SPLITS):
            return folder
    return None


def available() -> tuple[bool, str]:
    if importlib.util.find_spec("aeon") is None:
        return False, "the aeon package is not installed (pip install aeon)"
    if _folder() is None:
        return False, "aeon is installed but its BasicMotions .ts files are missing"
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
    folder = _folder()
    if folder is None:
        raise UserError("data.name", available()[1])
    xs: list[np.ndarray] = []
    names: list[str] = []
    class_names: list[str] = []
    for split in _SPLITS:
        path = folder / f"BasicMotions_{split}.ts"
        x, y, cn = parse_ts(path.read_text(), "data.name")
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
        description="aeon BasicMotions: 80 smartwatch recordings, 4 activities, accelerometer "
        "(acc) and gyroscope (gyro), 100 steps at 10 Hz",
        default_modalities=("acc", "gyro"),
    )
)
