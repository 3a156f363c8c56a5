"""Names -> objects for everything a config picks by name, and `package.module:Name` import
paths for what users bring, resolved in one place.

Kinds: `source` (data sources), `method`, `engine`, `encoder` and `topology`. The package that
defines a kind's built-ins registers them when it is imported; this module imports nothing of
parse_dfl at import time and loads a kind's home package only when a name of that kind is
looked up. Why: config.py validates names through here, and the data, method and engine
layers import config.py; engines receive a method without importing the methods.

An import path is plain Python: `package.module` must be importable (installed, or its folder
on PYTHONPATH), and `Name` must be an object of the kind's shape (a Method subclass, an
nn.Module subclass, ...). Anything else is a UserError naming the config field.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

from parse_dfl.errors import UserError

HOMES: dict[str, str] = {
    "source": "parse_dfl.data",
    "method": "parse_dfl.methods",
    "engine": "parse_dfl.engines",
    "encoder": "parse_dfl.models.encoders",
    "topology": "parse_dfl.graph.topology",
}
"""The package whose import registers a kind's built-ins."""

_SHAPES: dict[str, tuple[str, str, str]] = {
    # kind: (base object as an import path, "class" | "instance" | "callable", in words)
    "source": ("parse_dfl.data.base:Source", "instance", "a parse_dfl.data.Source"),
    "method": ("parse_dfl.methods.base:Method", "class", "a subclass of parse_dfl.methods.Method"),
    "engine": ("parse_dfl.engines.base:Engine", "class", "a subclass of parse_dfl.engines.Engine"),
    "encoder": ("torch.nn:Module", "class", "a subclass of torch.nn.Module"),
    "topology": ("", "callable", "a function (TopologyConfig, n, seed) -> networkx.Graph"),
}

IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
"""`package.module:Name` (Name may be dotted: `module:Outer.Inner`)."""

_TABLES: dict[str, dict[str, Any]] = {kind: {} for kind in HOMES}
_RESOLVED: dict[tuple[str, str], Any] = {}


def table(kind: str) -> dict[str, Any]:
    """The live name -> object table of a kind (its home package fills it on import; tests
    may add entries to it). Does not import the home package."""
    return _TABLES[kind]


def register(kind: str, name: str, obj: Any) -> Any:
    """Make `obj` available as `name` (e.g. `register("encoder", "gru", MyGRU)`); returns it."""
    if IMPORT_PATH.fullmatch(name) or not name:
        raise ValueError(f"{name!r} cannot be a registered name (it looks like an import path)")
    _TABLES[kind][name] = obj
    return obj


def names(kind: str) -> list[str]:
    """Registered names of a kind, built-ins first (imports the kind's home package)."""
    importlib.import_module(HOMES[kind])
    return list(_TABLES[kind])


def is_import_path(text: str) -> bool:
    return IMPORT_PATH.fullmatch(text) is not None


def resolve(kind: str, name: str, where: str) -> Any:
    """The object `name` stands for: a registered name, or an import path imported and
    checked to be of the kind's shape. Anything else is a UserError at `where`."""
    if is_import_path(name):
        key = (kind, name)
        if key not in _RESOLVED:
            _RESOLVED[key] = _check_shape(kind, _import(name, where), name, where)
        return _RESOLVED[key]
    known = names(kind)
    if name not in known:
        raise UserError(
            where,
            f"unknown '{name}' (choose from {', '.join(known)}, or give an import path "
            f"package.module:Name)",
        )
    return _TABLES[kind][name]


def _import(path: str, where: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name + ".").startswith(e.name + "."):
            raise UserError(
                where,
                f"cannot import '{path}': no module named '{e.name}' (install it, or put its "
                f"folder on PYTHONPATH)",
            ) from None
        raise UserError(where, f"cannot import '{path}': {e}") from None
    except Exception as e:  # the user's module raised while it was imported
        raise UserError(
            where, f"cannot import '{path}': importing {module_name} raised {type(e).__name__}: {e}"
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UserError(
                where, f"cannot import '{path}': {module_name} has no '{attr}'"
            ) from None
    return obj


def _check_shape(kind: str, obj: Any, path: str, where: str) -> Any:
    base_path, shape, words = _SHAPES[kind]
    if shape == "callable":
        ok = callable(obj) and not inspect.isclass(obj)
    else:
        mod, _, attr = base_path.partition(":")
        base = getattr(importlib.import_module(mod), attr)
        if shape == "class":
            ok = inspect.isclass(obj) and issubclass(obj, base)
        else:
            ok = isinstance(obj, base)
    if not ok:
        what = f"the class {obj.__name__}" if inspect.isclass(obj) else f"a {type(obj).__name__}"
        raise UserError(where, f"'{path}' is {what}, not {words}")
    if shape == "class" and inspect.isabstract(obj):
        missing = ", ".join(sorted(getattr(obj, "__abstractmethods__", ())))
        raise UserError(where, f"'{path}' is abstract: it does not define {missing}")
    return obj
