"""The one YAML reader of the tool: safe tags only, and bounded in size.

`yaml.safe_load` stops code execution but not a "billion laughs" document: a few lines of
nested aliases (`b: [*a, *a, ...]`) stand for billions of values once expanded, and whatever
walks the loaded value (validation, copying, JSON) hangs and eats memory. Aliases are resolved
to shared objects, so the expanded size is counted on the composed node graph (each node once,
remembered) before anything is constructed; a document that expands past MAX_NODES values, or
nests deeper than MAX_DEPTH, or a file larger than MAX_BYTES, is refused with one UserError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from parse_dfl.errors import UserError

MAX_BYTES = 16 * 2**20
"""Largest YAML file read (configs and sweep files are a few KiB)."""
MAX_NODES = 100_000
"""Most values a document may hold once every alias is expanded."""
MAX_DEPTH = 100
"""Deepest nesting of mappings and lists."""


def _expanded_size(root: yaml.Node, where: str) -> int:
    """Values in the document with every alias expanded; refuses bombs and recursive aliases.

    Iterative (a deep document cannot exhaust the Python stack) and memoised per node, so the
    work is linear in the composed nodes even when the expansion is astronomically large."""
    size: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            total = 1
            for child in _children(node):
                total += size[id(child)]
                if total > MAX_NODES:
                    raise UserError(
                        where,
                        f"the YAML expands to more than {MAX_NODES} values (an alias bomb?); "
                        "write the values out or use fewer aliases",
                    )
            size[key] = total
            continue
        if key in size:
            continue
        if key in active:
            raise UserError(where, "the YAML has a recursive alias (a value that contains itself)")
        if depth > MAX_DEPTH:
            raise UserError(where, f"the YAML nests deeper than {MAX_DEPTH} levels")
        active.add(key)
        stack.append((node, depth, True))
        for child in _children(node):
            if id(child) not in size:
                stack.append((child, depth + 1, False))
    return size[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def loads(text: str, where: str) -> Any:
    """Parse one YAML document with safe tags; UserError (naming `where`) for a bomb.

    Syntax errors are raised as yaml.YAMLError so a caller can point at the line."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise UserError(where, f"the YAML nests deeper than {MAX_DEPTH} levels") from None
        if node is None:
            return None
        _expanded_size(node, where)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_file(path: str | Path, what: str = "file") -> Any:
    """Read and parse a YAML file: one UserError naming the file (and line) for any problem."""
    p = Path(path)
    if not p.is_file():
        raise UserError(str(path), f"{what} not found")
    try:
        n = p.stat().st_size
        if n > MAX_BYTES:
            raise UserError(str(path), f"{n} bytes is too large for YAML (at most {MAX_BYTES})")
        with p.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as e:
        raise UserError(str(path), f"cannot read it: {e.strerror or e}") from None
    if len(raw) > MAX_BYTES:
        raise UserError(str(path), f"too large for YAML (more than {MAX_BYTES} bytes)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(str(path), f"not UTF-8 text (byte {e.start})") from None
    try:
        return loads(text, str(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or "malformed YAML"
        raise UserError(where, f"malformed YAML: {problem}") from None
