"""Plain-text tables for the terminal: the one column aligner of ``lakehouse status``,
``lakehouse dq`` and ``lakehouse sql`` (which draws a box around it)."""

from __future__ import annotations


def widths(rows: list[list[str]]) -> list[int]:
    return [max(len(r[i]) for r in rows) for i in range(len(rows[0]))] if rows else []


def align(rows: list[list[str]], right: tuple[int, ...] = ()) -> list[str]:
    """``rows`` (the first one a header) as lines of columns two spaces apart; the columns whose
    index is in ``right`` (numbers) flush right."""
    w = widths(rows)
    return ["  ".join(c.rjust(n) if i in right else c.ljust(n) for i, (c, n) in enumerate(zip(r, w))).rstrip()
            for r in rows]
