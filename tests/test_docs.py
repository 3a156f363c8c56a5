"""Docs that cannot drift: every `parse-dfl ...` command shown in a code block of README.md or
docs/*.md parses (run with --help appended; the cheap ones run for real), every option it
names exists, and every repository path the docs name or link to is there."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from parse_dfl import launch
from parse_dfl.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH = re.compile(r"(?<![\w./-])((?:configs|docs|scripts|benchmarks|src|tests)/[\w./=-]*)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z-]{2,}\b")  # NAME, RUN-DIR: stands for a value
EXAMPLES = {"configs/mine.yaml"}  # made-up paths the docs use to explain a rule, not files
CHEAP = (["datasets"], ["methods"], ["config"], ["config", "--markdown"])


def code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) inside ``` blocks, with backslash continuations joined."""
    out: list[tuple[int, str]] = []
    inside, pending, start = False, "", 0
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip().startswith("```"):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        if not pending:
            start = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return out


def commands() -> list[tuple[str, str, list[str]]]:
    """(where, program, arguments) of every parse-dfl or parse_dfl.launch command line;
    synopsis brackets and '...' are dropped, leaving the words they show. A synopsis (a line
    with brackets) is marked by its `where` ending in ' (synopsis)'."""
    found = []
    for doc in DOCS:
        for n, line in code_lines(doc.read_text()):
            if "parse-dfl" not in line and "parse_dfl.launch" not in line:
                continue
            words = shlex.split(line.replace("[", " ").replace("]", " "), comments=True)
            words = [w for w in words if w != "..."]
            where = f"{doc.relative_to(ROOT)}:{n}" + (" (synopsis)" if "[" in line else "")
            for i, w in enumerate(words):
                if w == "parse-dfl" or w.endswith("/parse-dfl"):
                    found.append((where, "parse-dfl", words[i + 1 :]))
                    break
                if w == "parse_dfl.launch" and i > 0 and words[i - 1] == "-m":
                    found.append((where, "launch", words[i + 1 :]))
                    break
    return found


COMMANDS = commands()


def help_text(program: str, args: list[str]) -> str:
    """The --help output after `args`; fails unless it exits 0."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as done:
        if program == "launch":
            launch.build_parser().parse_args([*args, "--help"])
        else:
            main([*args, "--help"])
    assert done.value.code == 0, f"{program} {' '.join(args)} --help exited {done.value.code}"
    return buf.getvalue()


def test_the_docs_show_commands() -> None:
    """The extraction finds what the README shows (an empty list would pass everything)."""
    shown = {args[0] for _, program, args in COMMANDS if program == "parse-dfl"}
    assert shown >= {"run", "sweep", "report", "pid", "probe", "missing", "datasets", "config"}
    assert any(program == "launch" for _, program, _ in COMMANDS)


@pytest.mark.parametrize(("where", "program", "args"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_documented_command_parses(where: str, program: str, args: list[str]) -> None:
    if not where.endswith("(synopsis)"):  # a synopsis shows placeholders (--jobs N)
        help_text(program, args)
    # options are checked against the subcommand's own help
    text = help_text(program, args[:1] if program == "parse-dfl" else [])
    for word in args:
        option = word.split("=")[0]
        if option.startswith("--"):
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), (
                f"{where}: {option} is not an option of `{program} {args[0]}`"
            )
    if args in [list(c) for c in CHEAP]:
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(args) == 0


def named_paths(doc: Path) -> list[tuple[str, Path]]:
    text = doc.read_text()
    found: list[tuple[str, Path]] = []
    for m in PATH.finditer(text):
        path = m.group(1).rstrip(".")
        if not PLACEHOLDER.search(path) and path not in EXAMPLES:
            found.append((path, ROOT / path))
    for m in LINK.finditer(text):
        target = m.group(1).split("#")[0]
        if target and not re.match(r"[a-z]+:", target):
            found.append((target, doc.parent / target))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_path_the_docs_name_exists(doc: Path) -> None:
    missing = [name for name, path in named_paths(doc) if not path.exists()]
    assert missing == [], f"{doc.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_the_installed_command_runs() -> None:
    """The console script itself, not only cli.main: the entry point is wired."""
    import subprocess
    import sys

    script = Path(sys.executable).with_name("parse-dfl")
    if not script.exists():
        pytest.skip("no parse-dfl script next to this interpreter")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage: parse-dfl" in done.stdout


def test_the_sweep_table_lists_every_sweep_with_its_run_count() -> None:
    from parse_dfl.experiments.sweep import load_sweep

    text = (ROOT / "docs" / "experiments.md").read_text()
    table = dict(re.findall(r"^\| `(configs/[\w/.-]+\.yaml)` \|.*\| (\d+) \|$", text, re.M))
    on_disk = sorted(
        str(p.relative_to(ROOT))
        for d in ("sweeps", "paper")
        for p in (ROOT / "configs" / d).glob("*.yaml")
    )
    assert sorted(table) == on_disk
    for path, runs in table.items():
        assert len(load_sweep(ROOT / path).runs) == int(runs), path
