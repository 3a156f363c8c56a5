"""Live metrics of a run: `metrics.csv` in the run folder, and TensorBoard scalars on request.

results.json appears only when a run has finished; a long run, or one that dies, should still
show its learning curve. After every evaluation one row per protocol (global, local) and agent
type, plus the mean over all agents (type `all`), is appended to metrics.csv and flushed at
once. Columns: round, protocol, agent_type, accuracy, train_loss (the mean over the agents
that trained that round: the same on every row of a round), bytes_sent (cumulative, all
agents), seconds (training time so far).

On resume the file is first rewritten from the checkpoint's history, dropping the rows of
rounds after the checkpoint (evaluated before the run died, and about to be evaluated again),
so the finished file equals the uninterrupted run's (but for the seconds column).

A finished run being replaced (`--overwrite` without checkpoints) stays whole until the new
run has finished: the new run writes `metrics.new.csv` (and `tensorboard.new/`) beside it,
and `commit` moves them into place with the rest of its files. A run stopped by a reported
problem (UserError: a full disk) removes what it wrote, as every other file of a run is
either whole or absent; a run that dies otherwise (killed, a crash) leaves its curve.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from parse_dfl.errors import UserError
from parse_dfl.files import as_user_error, atomic_write_text

METRICS = "metrics.csv"
TENSORBOARD = "tensorboard"
COLUMNS = ("round", "protocol", "agent_type", "accuracy", "train_loss", "bytes_sent", "seconds")
PROTOCOLS = (
    ("global", "by_type", "mean_accuracy"),
    ("local", "by_type_local", "mean_local_accuracy"),
)


def check_tensorboard() -> None:
    """Refuse `logging.tensorboard: true` before any training when tensorboard is missing
    (torch.utils.tensorboard needs it): better now than after the first evaluation."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UserError(
            "logging.tensorboard",
            "needs the tensorboard package, which is not installed "
            "(pip install 'parse-dfl[tensorboard]')",
        )


def rows(entry: dict[str, Any]) -> list[list[Any]]:
    """The metrics.csv rows of one history entry (see the module docstring)."""
    out: list[list[Any]] = []
    common = (entry["train_loss"], entry["bytes_sent"], entry["seconds"])
    for protocol, types, mean in PROTOCOLS:
        for agent_type, acc in entry[types].items():
            out.append([entry["round"], protocol, agent_type, acc, *common])
        out.append([entry["round"], protocol, "all", entry[mean], *common])
    return out


def _csv_text(lines: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(lines)
    return buf.getvalue()


def _summary_writer(log_dir: Path, purge_step: int | None) -> Any:
    """torch's SummaryWriter (a seam for the tests; imported late: it loads tensorboard)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


class MetricsLog:
    """The engine's `on_eval` hook: called with the history so far, once before the first
    round (on resume, the checkpoint's history) and after every evaluation."""

    def __init__(self, folder: Path, tensorboard: bool = False) -> None:
        self.folder = Path(folder)
        self.staged = (self.folder / "results.json").is_file()
        tag = ".new" if self.staged else ""
        self.path = self.folder / f"metrics{tag}.csv"
        self.tb_dir = self.folder / f"{TENSORBOARD}{tag}"
        self.tensorboard = tensorboard
        self._file: TextIO | None = None
        self._tb: Any = None
        self._tb_purge: int | None = None
        self._tb_backlog: list[dict[str, Any]] = []
        self._written = 0
        self._started = False
        self._made: list[Path] = []  # folders the log may create, innermost first

    def __call__(self, history: list[dict[str, Any]]) -> None:
        if not self._started:
            self._started = True
            self._made = [p for p in [self.folder, *self.folder.parents] if not p.exists()]
            self._start(history)
            return
        if self._file is None:
            self._open([])
        new = history[self._written :]
        self._write(_csv_text([r for entry in new for r in rows(entry)]))
        self._written = len(history)
        if self.tensorboard:
            self._scalars(new)

    def _start(self, history: list[dict[str, Any]]) -> None:
        """The history the run starts from is exactly what the file must hold: rewrite it
        now if there is anything to keep or a stale file to replace; else wait for a row (a
        run that fails before its first evaluation leaves no file)."""
        if history or self.path.exists():
            self._open(history)
        if not self.tensorboard:
            return
        has_events = self.tb_dir.is_dir() and any(self.tb_dir.glob("events.out.tfevents.*"))
        if not history:
            shutil.rmtree(self.tb_dir, ignore_errors=True)  # a dead run's: nothing to keep
        elif has_events:  # hide the events of rounds after the checkpoint
            self._tb_purge = int(history[-1]["round"]) + 1
        else:  # logging turned on at resume: the curve so far, too
            self._tb_backlog = list(history)

    def _open(self, history: list[dict[str, Any]]) -> None:
        lines = [list(COLUMNS), *(r for entry in history for r in rows(entry))]
        atomic_write_text(self.path, _csv_text(lines))
        try:
            self._file = open(self.path, "a", newline="")  # noqa: SIM115 (kept open: appended)
        except OSError as e:
            raise as_user_error(self.path, e) from e
        self._written = len(history)

    def _write(self, text: str) -> None:
        assert self._file is not None
        try:
            self._file.write(text)
            self._file.flush()
        except OSError as e:
            raise as_user_error(self.path, e) from e

    def _scalars(self, entries: list[dict[str, Any]]) -> None:
        if self._tb is None:
            self._tb = _summary_writer(self.tb_dir, self._tb_purge)
            entries = [*self._tb_backlog, *entries]
        for entry in entries:
            step = int(entry["round"])
            for protocol, types, mean in PROTOCOLS:
                for agent_type, acc in entry[types].items():
                    self._tb.add_scalar(f"accuracy_{protocol}/{agent_type}", acc, step)
                self._tb.add_scalar(f"accuracy_{protocol}/all", entry[mean], step)
            self._tb.add_scalar("train_loss", entry["train_loss"], step)
            self._tb.add_scalar("bytes_sent", entry["bytes_sent"], step)
        self._tb.flush()

    def close(self) -> None:
        """Close the files (the rows are on disk already); safe to call twice."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def discard(self) -> None:
        """The run stopped with a reported problem (a full disk, say): remove what it wrote,
        so the folder is as it was (a resume rebuilds the file from its checkpoint). Nothing
        is removed before the log has started: a refused resume keeps the old curve."""
        self.close()
        if not self._started:
            return
        self.path.unlink(missing_ok=True)
        if self.tensorboard:
            shutil.rmtree(self.tb_dir, ignore_errors=True)
        for folder in self._made:  # only if empty: never anyone else's files
            with contextlib.suppress(OSError):
                folder.rmdir()

    def commit(self) -> None:
        """The run has finished: close, and move staged files over the replaced run's."""
        self.close()
        if not self.staged:
            return
        try:
            if self.path.exists():
                os.replace(self.path, self.folder / METRICS)
            if self.tb_dir.is_dir():
                shutil.rmtree(self.folder / TENSORBOARD, ignore_errors=True)
                os.replace(self.tb_dir, self.folder / TENSORBOARD)
        except OSError as e:
            raise as_user_error(self.folder / METRICS, e) from e
