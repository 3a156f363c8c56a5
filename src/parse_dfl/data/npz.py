"""Bring your own data: one .npz file (see docs/byod.md).

Layout of the file given as data.path (written with np.savez / np.savez_compressed):

    x_<modality>  float array, first axis = samples, one key per modality:
                  2-D (N, D)        -> kind "vector"
                  3-D (N, C, T)     -> kind "series" (channels, time steps)
                  4-D (N, C, H, W)  -> kind "image"  (channels, height, width)
                  (with data.layout: channels-last, (N, T, C) and (N, H, W, C), moved to the
                  above; a channel axis longer than the last axis is warned about, since a
                  series stored the other way round would otherwise be read without a word)
    y             integer labels 0..K-1, shape (N,)
    groups        optional integer group per sample (e.g. subject id), shape (N,)
    class_names   optional string array of length K (then K = len(class_names),
                  otherwise K = max(y) + 1)

Modality names are what follows "x_" (letters, digits, '_' and '-'). Any other key is refused,
so a typo is not silently ignored. The file is read with allow_pickle=False: object arrays are
refused. Before any array is read, every member's .npy header and zip sizes must agree and the
arrays may take at most MAX_BYTES (8 GiB) uncompressed. Every problem with the file is reported
as one UserError naming data.path.
"""

from __future__ import annotations

import math
import re
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from parse_dfl.data.base import Kind, MultimodalDataset, Source, register
from parse_dfl.errors import UserError

if TYPE_CHECKING:
    from parse_dfl.config import DataConfig

WHERE = "data.path"
KIND_BY_NDIM: dict[int, Kind] = {2: "vector", 3: "series", 4: "image"}
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_OPTIONAL = ("groups", "class_names")
MAX_BYTES = 8 * 2**30
"""Most bytes the arrays of one .npz may take uncompressed (checked before reading)."""
MAX_MEMBERS = 1024
"""Most arrays in one .npz."""


def available() -> tuple[bool, str]:
    return True, ""


def _fail(path: Path | str, problem: str) -> UserError:
    return UserError(WHERE, f"{path}: {problem}")


def _size(n: int) -> str:
    """Bytes for a person: 7.3 TiB, not 8000000000000."""
    if n < 1024:
        return f"{n} bytes"
    value, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def _header(path: Path, key: str, fp: IO[bytes]) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, bytes before the data) from one member's .npy header, nothing more read."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
    except ValueError:
        raise _fail(path, f"'{key}' is not a .npy array (store arrays with np.savez)") from None
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(fp)
    elif version == (3, 0) and hasattr(fmt, "_read_array_header"):
        shape, _, dtype = fmt._read_array_header(fp, version)
    else:
        raise _fail(path, f"'{key}' has an unsupported .npy format version {version}")
    return tuple(shape), dtype, fp.tell()


def _check_members(path: Path, zf: zipfile.ZipFile) -> list[tuple[str, zipfile.ZipInfo]]:
    """Every member's declared sizes against MAX_BYTES and against its .npy header, before any
    array is allocated or decompressed (why: a header may promise 10^12 elements, a few KiB
    of deflate may unpack to many GiB)."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise _fail(path, f"{len(infos)} arrays in the archive; at most {MAX_MEMBERS}")
    total = sum(i.file_size for i in infos)
    if total > MAX_BYTES:
        raise _fail(
            path,
            f"its arrays take {_size(total)} uncompressed; at most {_size(MAX_BYTES)} "
            "(see docs/byod.md)",
        )
    members: list[tuple[str, zipfile.ZipInfo]] = []
    for info in infos:
        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if any(k == key for k, _ in members):
            raise _fail(path, f"'{key}' appears twice in the archive")
        with zf.open(info) as fp:
            shape, dtype, offset = _header(path, key, fp)
        if dtype.hasobject:
            raise _fail(path, "contains object arrays; store plain numeric / string arrays")
        nbytes = dtype.itemsize * math.prod(shape)  # Python ints: no overflow
        if offset + nbytes != info.file_size:
            raise _fail(
                path,
                f"'{key}' declares shape {shape} of {dtype} ({_size(nbytes)}) but holds "
                f"{_size(max(info.file_size - offset, 0))} of data: the file is damaged",
            )
        members.append((key, info))
    return members


def _read(path: Path) -> dict[str, np.ndarray]:
    """Every array of the file, read eagerly so a truncated member fails here.

    Sizes are checked first (_check_members); a member then yields at most its declared size,
    since zipfile never returns more than ZipInfo.file_size and checks the CRC at the end."""
    try:
        # Open the file ourselves: np.load leaks its own handle when the zip is broken.
        with open(path, "rb") as fh:
            magic = fh.read(6)
            if magic.startswith(b"\x93NUMPY"):
                raise _fail(path, "this is a single .npy array, not an .npz archive (use np.savez)")
            if not magic.startswith(b"PK"):
                raise _fail(
                    path, "not an .npz file (it is not a zip archive; write it with np.savez)"
                )
            fh.seek(0)
            with zipfile.ZipFile(fh) as zf:
                arrays = {}
                for key, info in _check_members(path, zf):
                    with zf.open(info) as fp:
                        arrays[key] = np.lib.format.read_array(fp, allow_pickle=False)
                return arrays
    except MemoryError:
        raise _fail(path, "not enough memory to load its arrays") from None
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise _fail(
                path, "contains object arrays; store plain numeric / string arrays"
            ) from None
        raise _fail(path, f"not a valid .npz file ({e})") from None
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, KeyError, NotImplementedError) as e:
        raise _fail(path, f"not a valid .npz file or truncated ({e})") from None


def _labels(path: Path, y: np.ndarray) -> np.ndarray:
    if y.ndim != 1:
        raise _fail(
            path, f"'y' must be one-dimensional (one label per sample), got shape {y.shape}"
        )
    whole_floats = y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all()
    if y.dtype.kind not in "iu" and not whole_floats:
        raise _fail(path, f"'y' must hold integer class labels 0..K-1, got dtype {y.dtype}")
    out = y.astype(np.int64)
    if out.size and out.min() < 0:
        raise _fail(path, f"'y' has negative labels (min {out.min()}); use 0..K-1")
    return out


def _channels_first(path: Path, key: str, x: np.ndarray, layout: str) -> np.ndarray:
    """`x` with its channel axis second, as the encoders read it; a warning when the channel
    axis comes out longer than the last (time or width) axis, the mark of a series stored
    (N, T, C) but read channels-first, or the other way round."""
    if x.ndim < 3:
        return x
    if layout == "channels-last":
        x = np.moveaxis(x, -1, 1)
    if x.shape[1] > x.shape[-1]:
        other = "channels-first" if layout == "channels-last" else "channels-last"
        what = "time steps" if x.ndim == 3 else "columns"
        warnings.warn(
            f"{WHERE}: {path}: '{key}' is read as {x.shape[1]} channels of {x.shape[-1]} "
            f"{what} (data.layout: {layout}); if that is the wrong way round, set "
            f"data.layout: {other}",
            UserWarning,
            stacklevel=3,
        )
    return np.ascontiguousarray(x)


def load(cfg: DataConfig) -> MultimodalDataset:
    if not cfg.path:
        raise UserError(WHERE, "the npz source needs data.path (the .npz file to load)")
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise _fail(path, "no such file")
    if not path.is_file():
        raise _fail(path, "not a file")
    arrays = _read(path)

    unknown = [k for k in arrays if not k.startswith("x_") and k not in ("y", *_OPTIONAL)]
    if unknown:
        raise _fail(
            path,
            f"unexpected key(s) {', '.join(repr(k) for k in unknown)}; expected x_<modality>, y, "
            "and optionally groups, class_names",
        )
    xs = {k[2:]: v for k, v in arrays.items() if k.startswith("x_")}
    if not xs:
        raise _fail(path, "no modality arrays: name them x_<modality>, e.g. x_acc")
    if "y" not in arrays:
        raise _fail(path, "no labels: add an integer array 'y'")
    labels = _labels(path, arrays["y"])
    n = labels.shape[0]
    if n == 0:
        raise _fail(path, "'y' is empty: the file has no samples")

    modalities: dict[str, np.ndarray] = {}
    kinds: dict[str, Kind] = {}
    for name, x in xs.items():
        key = f"x_{name}"
        if not _NAME.match(name):
            raise _fail(path, f"'{key}': modality names may use only letters, digits, '_' and '-'")
        if x.dtype.kind not in "biuf":
            raise _fail(path, f"'{key}' must be numeric, got dtype {x.dtype}")
        if x.ndim not in KIND_BY_NDIM:
            raise _fail(
                path,
                f"'{key}' has shape {x.shape}: use 2 axes (N, D), 3 (N, C, T) or 4 (N, C, H, W)",
            )
        if x.shape[0] != n:
            raise _fail(path, f"'{key}' has {x.shape[0]} samples but 'y' has {n} labels")
        if not np.isfinite(x).all():
            raise _fail(path, f"'{key}' contains NaN or infinite values")
        with np.errstate(over="ignore"):
            x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise _fail(path, f"'{key}' has values too large for float32 (beyond 3.4e38)")
        modalities[name] = _channels_first(path, key, x, cfg.layout)
        kinds[name] = KIND_BY_NDIM[x.ndim]

    groups = None
    if "groups" in arrays:
        g = arrays["groups"]
        if g.dtype.kind not in "iu":
            raise _fail(path, f"'groups' must be integers, got dtype {g.dtype}")
        if g.shape != (n,):
            raise _fail(path, f"'groups' must have shape ({n},), got {g.shape}")
        groups = g.astype(np.int64)

    n_classes = int(labels.max()) + 1
    class_names: list[str] = []
    if "class_names" in arrays:
        cn = arrays["class_names"]
        if cn.dtype.kind not in "US" or cn.ndim != 1:
            raise _fail(path, "'class_names' must be a one-dimensional string array")
        class_names = [c.decode() if isinstance(c, bytes) else str(c) for c in cn.tolist()]
        if len(class_names) < n_classes:
            raise _fail(
                path,
                f"'class_names' names {len(class_names)} classes but 'y' goes up to "
                f"{n_classes - 1}",
            )
        n_classes = len(class_names)
    if n_classes < 2:
        raise _fail(path, "'y' has only one class; a classifier needs at least two")

    try:
        return MultimodalDataset(
            name=path.stem,
            modalities=modalities,
            kinds=kinds,
            labels=labels,
            n_classes=n_classes,
            groups=groups,
            class_names=class_names,
        )
    except UserError as e:
        raise _fail(path, e.problem) from None


SOURCE = register(
    Source(
        name="npz",
        load=load,
        available=available,
        description="bring your own data: an .npz file with x_<modality> arrays and labels y "
        "(data.path; see docs/byod.md)",
        default_modalities=(),
    )
)
