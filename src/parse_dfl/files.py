"""Atomic file writes, used for every file parse-dfl writes (run folders, sweeps, reports).

A file appears whole or not at all: it is written to a temporary file in the same folder,
flushed, fsynced and renamed over the target. On any failure the temporary file is removed,
so a full disk never leaves `.results.json.*.tmp` debris behind, and a full disk (or quota,
or a read-only folder) is reported as one line (`UserError`), not a traceback.

`mkstemp` creates files readable by their owner only (0600); the files are given the
user's usual permissions (0666 less the umask, 0644 by default) before the rename, as
`open()` would, so results can be shared like any other file.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from parse_dfl.errors import UserError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (/proc), else set
    and restored at once (under a lock: os.umask is process-wide)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open(path, "w")` would give a new file: 0666 less the umask."""
    return 0o666 & ~current_umask()


def as_user_error(path: Path, e: OSError) -> UserError:
    """An OS failure to write `path` as the one-line error the CLI prints (exit code 2)."""
    if e.errno in NO_SPACE:
        return UserError(
            str(path), "no space left on device; nothing was written (free some space, then rerun)"
        )
    return UserError(str(path), f"cannot write: {e.strerror or e}")


def _write_temp(path: Path, data: bytes) -> Path:
    """`data` in a fresh temporary file next to `path`, fsynced, with the user's file mode;
    returns its name. On failure nothing is left behind."""
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise as_user_error(path, e) from e
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise as_user_error(path, e) from e
        raise
    return tmp


def _make_folder(folder: Path, created: list[Path]) -> None:
    """Create `folder` and its missing parents, outermost first, noting each in `created`."""
    for p in reversed([folder, *folder.parents]):
        if p.is_dir():
            continue
        if p.exists():
            raise UserError(str(folder), f"{p} is a file, not a folder")
        try:
            p.mkdir()
        except FileExistsError:
            continue  # made by someone else meanwhile
        except OSError as e:
            raise as_user_error(folder, e) from e
        created.append(p)


def _sync_folder(folder: Path) -> None:
    """Make a rename durable (best effort: not every file system lets a folder be fsynced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_files(
    files: Sequence[tuple[Path, bytes]], before_commit: Callable[[], None] | None = None
) -> None:
    """Write several files as one step, as far as a file system allows: every file goes to a
    temporary file first; only once all of them are on disk (no space problem can happen
    later) does `before_commit` run and are they renamed into place, in the given order.

    Put the file whose presence means "complete" (results.json) last."""
    temps: list[tuple[Path, Path]] = []
    created: list[Path] = []
    try:
        for folder in dict.fromkeys(Path(p).parent for p, _ in files):
            _make_folder(folder, created)
        for path, data in files:
            temps.append((_write_temp(Path(path), data), Path(path)))
        if before_commit is not None:
            before_commit()
        while temps:
            tmp, path = temps[0]
            try:
                os.replace(tmp, path)
            except OSError as e:
                raise as_user_error(path, e) from e
            temps.pop(0)
    except BaseException:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        for folder in reversed(created):  # only if still empty: never someone else's files
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    for folder in dict.fromkeys(Path(p).parent for p, _ in files):
        _sync_folder(folder)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see the module docstring)."""
    atomic_write_files([(Path(path), data)])


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def torch_bytes(obj: Any) -> bytes:
    """`torch.save` into memory: the bytes are complete before any file is touched, and a
    write error surfaces as the OSError it is (not torch's wrapped RuntimeError)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """`torch.save(obj, path)`, atomically."""
    atomic_write_bytes(path, torch_bytes(obj))
