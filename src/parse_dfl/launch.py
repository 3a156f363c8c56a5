"""One process of a distributed run, started by torchrun:

    torchrun --nproc-per-node 4 -m parse_dfl.launch CONFIG [--set KEY=VALUE ...] [--out DIR]

Every process reads the same config; the engine is `distributed` whatever the config says.
Process 0 writes the run folder. When torchrun restarts the job after a process died
(`--max-restarts`), the processes continue from the folder's last checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from parse_dfl.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m parse_dfl.launch", description=__doc__)
    p.add_argument("config", nargs="?", help="YAML config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", help="run folder (written by process 0)")
    p.add_argument("--resume", metavar="RUN-DIR", help="continue an interrupted run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


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
        if rank == 0:
            print(f"parse-dfl: error: {e}", file=sys.stderr)
        return 2
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


if __name__ == "__main__":
    code = main()
    shutdown()
    sys.exit(code)
