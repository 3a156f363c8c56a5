"""Plain-text tables for the terminal, at most WIDTH columns wide."""

from __future__ import annotations

import re
import textwrap

WIDTH = 100
"""Widest line a table prints (a terminal, a CI log, a pasted snippet)."""
GAP = "  "
MIN_TEXT = 16
"""Narrowest a wrapped text column gets before the table is split into blocks instead."""
_NUM = r"[-+]?(\d[\d.,]*(e[-+]?\d+)?%?|nan|inf|-)"
_NUMBER = re.compile(rf"{_NUM}( ?/ ?{_NUM})*")


def _numeric(column: list[str]) -> bool:
    """Numbers (or '-' for none) are right-aligned; words read better left-aligned."""
    body = [c for c in column if c.strip()]
    return bool(body) and all(_NUMBER.fullmatch(c.strip()) for c in body)


def _render(rows: list[list[str]], widths: list[int], right: list[bool]) -> list[str]:
    """Rows under a rule; a cell wider than its column wraps onto continuation lines."""
    out: list[str] = []
    for n, row in enumerate(rows):
        cells = [
            textwrap.wrap(c, w, break_on_hyphens=False) or [""] if len(c) > w else [c]
            for c, w in zip(row, widths, strict=True)
        ]
        for k in range(max(len(c) for c in cells)):
            parts = [
                (c[k] if k < len(c) else "").rjust(w)
                if r
                else (c[k] if k < len(c) else "").ljust(w)
                for c, w, r in zip(cells, widths, right, strict=True)
            ]
            out.append(GAP.join(parts).rstrip())
        if n == 0:
            out.append(GAP.join("-" * w for w in widths))
    return out


def _total(widths: list[int]) -> int:
    return sum(widths) + len(GAP) * (len(widths) - 1)


def _narrow(widths: list[int], right: list[bool], width: int) -> list[int] | None:
    """Narrow the text columns after the first (they wrap) until the table fits: always the
    widest, the last one (a description, a meaning) counted at 2/3 so it keeps more room.
    None when no column may shrink below MIN_TEXT and the table is still too wide."""
    fit = list(widths)
    last = len(fit) - 1
    while _total(fit) > width:
        text = [i for i in range(1, len(fit)) if not right[i] and fit[i] > MIN_TEXT]
        if not text:
            return None
        i = max(text, key=lambda j: (fit[j] / (1.5 if j == last else 1.0), j))
        fit[i] -= 1
    return fit


def text_table(rows: list[list[str]], width: int = WIDTH) -> str:
    """First row is the header; numeric columns right-aligned, others left-aligned.

    Too wide for `width`: text columns wrap (a description, a meaning); when that is not
    enough, the columns are split into blocks that fit, each repeating the first column, one
    block under the other (a table of many numbers)."""
    rows = [[str(c) for c in r] for r in rows]
    ncol = len(rows[0])
    widths = [max(len(r[i]) for r in rows) for i in range(ncol)]
    right = [i > 0 and _numeric([r[i] for r in rows[1:]]) for i in range(ncol)]
    if _total(widths) <= width:
        return "\n".join(_render(rows, widths, right))
    fit = _narrow(widths, right, width)
    if fit is not None:
        return "\n".join(_render(rows, fit, right))
    if ncol > 2:
        blocks: list[list[int]] = [[]]
        for i in range(1, ncol):
            if blocks[-1] and _total([widths[0], *(widths[j] for j in [*blocks[-1], i])]) > width:
                blocks.append([])
            blocks[-1].append(i)
        if len(blocks) > 1:
            parts = [text_table([[r[0], *(r[j] for j in b)] for r in rows], width) for b in blocks]
            return "\n\n".join(parts)
    # A first column or one number too wide on its own: narrow the widest columns (they wrap).
    fit = list(widths)
    while _total(fit) > width and max(fit) > 8:
        fit[fit.index(max(fit))] -= 1
    return "\n".join(_render(rows, fit, right))
