"""Markdown tables, the form every report of the benchmarks prints (and docs/ quotes).

One table is a header row, an alignment row and rows of cells; an empty cell is written
``| |``, a number the way its column's format says, a missing one as a dash.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def fmt(value: Any, spec: str = ".3f", none: str = "—") -> str:
    """``value`` in format ``spec``, or ``none`` when it is None (not measured)."""
    return none if value is None else format(value, spec)


def times(ratio: float | None) -> str:
    """A ratio as ``1.23x``, or a dash when there is none."""
    return "—" if ratio is None else f"{ratio:.2f}x"


def row(cells: Iterable[Any]) -> str:
    """One markdown row: ``| a | b |``; an empty cell is ``| |``."""
    return "|" + "|".join(f" {cell} " if str(cell) else " " for cell in cells) + "|"


def markdown(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> str:
    """A markdown table.

    Args:
        header: the column names.
        rows: the cells of each row (anything ``str`` turns into text).
        align: one letter per column, ``l`` (left, the default for a column not named) or
            ``r`` (right: ``---:``).
    """
    marks = ["---:" if align[i:i + 1] == "r" else "---" for i in range(len(header))]
    return "\n".join([row(header), "|" + "|".join(marks) + "|", *(row(r) for r in rows)])
