"""One process of a distributed run, started by torchrun:

    torchrun --nproc-per-node 4 -m parse_dfl.launch CONFIG [--set KEY=VALUE ...] [--out DIR]

Every process reads the same config; the engine is `distributed` whatever the config says.
Process 0 writes the run folder. When torchrun restarts the job after a process died
(`--max-restarts`), the processes continue from the folder's last checkpoint.

`parse-dfl run --nprocs N` starts torchrun as `python -m parse_dfl.launch --agent TORCHRUN-ARGS`
(torchrun with its own log in a file) and sets PARSE_DFL_ERROR_DIR: a failing process then
writes its one line there instead of printing it, and the command prints the first failure's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from parse_dfl.errors import UserError

ERROR_DIR = "PARSE_DFL_ERROR_DIR"
"""Environment variable: the folder where failing processes leave their one line."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m parse_dfl.launch", description=__doc__)
    p.add_argument("config", nargs="?", help="YAML config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", help="run folder (written by process 0)")
    p.add_argument("--resume", metavar="RUN-DIR", help="continue an interrupted run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def one_line(text: str, limit: int = 400) -> str:
    """A message as one line: an exception's text may span several (torch's often do)."""
    line = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _report(rank: int, code: int, message: str, trace: str | None = None) -> int:
    """Leave a failure where `parse-dfl run --nprocs` reads it (PARSE_DFL_ERROR_DIR), or, under
    a torchrun started by hand, print it from every failing process: the one that failed may
    run on another machine than process 0."""
    folder = os.environ.get(ERROR_DIR)
    if not folder:
        who = "" if rank == 0 else f"rank {rank}: "
        print(f"parse-dfl: {who}error: {message}", file=sys.stderr)
        return code
    d = Path(folder)
    log = None
    if trace is not None:
        log = d / f"rank-{rank}.log"
        log.write_text(trace)
    record = {"rank": rank, "code": code, "message": message, "time": time.time()}
    record["log"] = str(log) if log else None  # the parent names it after a crash
    tmp = d / f".rank-{rank}.json.tmp"
    tmp.write_text(json.dumps(record))
    tmp.replace(d / f"rank-{rank}.json")  # whole or absent: the parent may read at any time
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    try:
        from parse_dfl.config import load_config
        from parse_dfl.experiments.run import resume_config, run

        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
        if args.resume:
            out: Path | None = Path(args.resume)
            cfg = resume_config(args.resume)
            resume = True
        else:
            if not args.config:
                raise UserError("launch", "a config file is needed (or --resume RUN-DIR)")
            cfg = load_config(args.config, args.set)
            out = Path(args.out) if args.out else None
            # a restarted job continues from the checkpoint its earlier attempt left
            resume = bool(restarted and out is not None and (out / "checkpoint.pt").is_file())
        if cfg.engine.name != "distributed":
            cfg = cfg.model_copy(
                update={"engine": cfg.engine.model_copy(update={"name": "distributed"})}
            )
        res = run(cfg, out, progress=not args.quiet and rank == 0, resume=resume)
    except UserError as e:
        return _report(rank, 2, str(e))
    except KeyboardInterrupt:  # torchrun passes Ctrl-C on; the launcher says it once
        return 130
    except Exception as e:
        if not os.environ.get(ERROR_DIR):
            raise  # by hand: Python's traceback, and torchrun's report names this rank
        return _report(rank, 1, one_line(f"{type(e).__name__}: {e}"), traceback.format_exc())
    if rank == 0:
        from parse_dfl.cli import accuracy_table

        print(accuracy_table([res]))
        print(
            f"{res['processes']} processes; bytes between processes per round "
            f"{res['bytes_between_processes_per_round']:.0f}, between agents "
            f"{res['bytes_between_agents_per_round']:.0f}"
        )
        if out is not None:
            print(f"run folder: {out}")
    return 0


def shutdown() -> None:
    """Leave together: a process that tears down its gloo context while a peer still
    receives its last message (the final gather to process 0) can abort the peer."""
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


# --- the launcher side: torchrun for `parse-dfl run --nprocs` ---------------------------------


def agent(torchrun_argv: Sequence[str]) -> int:
    """torchrun itself (torch.distributed.run), with its log and its multi-line report of a
    failed job written to PARSE_DFL_ERROR_DIR/torchrun.log instead of the console.

    The workers inherit this process's stdout and stderr, so their tables and rank 0's
    progress bar reach the user untouched; only torchrun's own Python-level output moves.
    torchrun's root cause (the first process it saw fail) goes to root-cause.json."""
    folder = Path(os.environ[ERROR_DIR])
    log = open(folder / "torchrun.log", "a", buffering=1)  # noqa: SIM115 (lives as long as we do)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("torch", "torch.distributed"):
        logging.getLogger(name).handlers = [handler]
    sys.stderr = log  # warnings and tracebacks of this process; fd 2 stays the workers'
    try:
        run(parse_args(list(torchrun_argv)))
    except ChildFailedError as e:
        log.write(e.format_msg() + "\n")
        rank, first = e.get_first_failure()  # the processes torchrun stopped come later
        root = {"rank": rank, "code": first.exitcode, "time": first.timestamp}
        (folder / "root-cause.json").write_text(json.dumps(root))
        return 1
    except SignalException as e:
        return 128 + int(e.sigval)
    except Exception:
        traceback.print_exc(file=log)
        return 1
    return 0


@dataclass
class Failure:
    """The first process of a job that failed: its rank, exit code (2 bad input, 1 crash)
    and one line; `log` holds its traceback or torchrun's log."""

    rank: int
    code: int
    message: str
    log: str | None


def first_failure(folder: Path) -> Failure | None:
    """The earliest failure of a job whose torchrun (`agent`) failed: the earliest line a
    process left, or torchrun's root cause if it left none (killed by a signal, say) and
    failed no later. torchrun keeps whole seconds, rounded down, so a process that died
    silently sorts before the peers that then lost their connection to it."""
    seen: list[tuple[float, Failure]] = []
    for path in folder.glob("rank-*.json"):
        r = json.loads(path.read_text())
        seen.append((r["time"], Failure(r["rank"], r["code"], r["message"], r["log"])))
    root_path = folder / "root-cause.json"
    if root_path.is_file():
        root = json.loads(root_path.read_text())
        if root["rank"] not in {f.rank for _, f in seen}:
            code = int(root["code"])
            if code < 0:
                try:
                    how = f"killed by signal {signal.Signals(-code).name}"
                except ValueError:
                    how = f"killed by signal {-code}"
            else:
                how = f"exited with code {code} and no message"
            log = str(folder / "torchrun.log")
            seen.append((float(root["time"]), Failure(int(root["rank"]), 1, how, log)))
    if not seen:
        return None
    return min(seen, key=lambda tf: (tf[0], tf[1].rank))[1]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--agent"]:
        sys.exit(agent(sys.argv[2:]))
    code = main()
    if code == 0:
        # After a failure the peers may be mid-collective: a barrier would pair with the wrong
        # call or hang; torchrun stops them instead.
        shutdown()
    # Leave without running C++ static destructors: a communication thread still joinable at
    # interpreter teardown aborts the process ("terminate called without an active
    # exception", seen once in a while in CI after a finished run). Every file the run wrote
    # is already on disk (atomic writes, fsync).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
