"""seglearn's smartwatch shoulder-exercise data, cut into fixed-length windows.

140 recordings (50 Hz, 6 channels: ax ay az wx wy wz) of 10 subjects doing 7 exercises. Each
recording is cut into windows of `data.window` samples with hop `data.step`; an incomplete tail
is dropped. Every window keeps its recording's exercise label and subject id (the group).

Modalities: "acc" (channels ax, ay, az) and "gyro" (wx, wy, wz), each (N, 3, window).

The file is read directly from the installed seglearn package (the same file
`seglearn.datasets.load_watch()` reads), so seglearn and its scikit-learn imports are not loaded.
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

_FILE = ("data", "watch_dataset.npy")


def _data_file() -> Path | None:
    spec = importlib.util.find_spec("seglearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder).joinpath(*_FILE)
        if path.is_file():
            return path
    return None


def available() -> tuple[bool, str]:
    if importlib.util.find_spec("seglearn") is None:
        return False, "the seglearn package is not installed (pip install 'parse-dfl[data]')"
    if _data_file() is None:
        return False, "seglearn is installed but its watch_dataset.npy file is missing"
    return True, ""


def load(cfg: DataConfig) -> MultimodalDataset:
    path = _data_file()
    if path is None:
        raise UserError("data.name", available()[1])
    # A pickled dict shipped inside seglearn (this is what seglearn.datasets.load_watch does).
    d = np.load(path, allow_pickle=True).item()
    window, step = int(cfg.window), int(cfg.step)
    segments: list[np.ndarray] = []
    labels: list[int] = []
    groups: list[int] = []
    for x, y, subject in zip(d["X"], d["y"], d["subject"], strict=True):
        x = np.asarray(x, dtype=np.float32)
        n_win = (x.shape[0] - window) // step + 1 if x.shape[0] >= window else 0
        for i in range(n_win):
            segments.append(x[i * step : i * step + window].T)  # (6, window)
            labels.append(int(y))
            groups.append(int(subject))
    if not segments:
        longest = max(np.asarray(x).shape[0] for x in d["X"])
        raise UserError(
            "data.window",
            f"no window of {window} samples fits: the longest recording has {longest} samples",
        )
    xs = np.stack(segments)  # (N, 6, window)
    return MultimodalDataset(
        name="watch",
        modalities={
            "acc": np.ascontiguousarray(xs[:, 0:3]),
            "gyro": np.ascontiguousarray(xs[:, 3:6]),
        },
        kinds={"acc": "series", "gyro": "series"},
        labels=np.asarray(labels, dtype=np.int64),
        n_classes=len(d["y_labels"]),
        groups=np.asarray(groups, dtype=np.int64),
        class_names=[str(c) for c in d["y_labels"]],
    )


SOURCE = register(
    Source(
        name="watch",
        load=load,
        available=available,
        description="seglearn smartwatch exercises: 7 classes, 10 subjects, windows of "
        "accelerometer (acc) and gyroscope (gyro) at 50 Hz",
        default_modalities=("acc", "gyro"),
    )
)
