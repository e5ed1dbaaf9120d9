"""HTML fragments of `chatspace report` that every kind's blocks are built from: tables,
charts (inline SVG, `svg`) with a note when there is nothing to draw, and values grouped for
box plots."""

from __future__ import annotations

from collections import defaultdict
from html import escape
from typing import Any

Block = str  # an HTML fragment


def table(header: list[str], rows: list[list[Any]]) -> Block:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            value = f"{value:.4g}"
        return escape("" if value is None else str(value))
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def chart(drawn: str | None, empty: str) -> Block:
    """A chart, or a note saying why there is none."""
    return drawn if drawn is not None else note(empty)


def note(text: str) -> Block:
    return f'<p class="note">{escape(text)}</p>'


def heading(text: str) -> Block:
    return f"<h2>{escape(text)}</h2>"


def grouped(rows: list[dict[str, Any]], key: str, column: str) -> dict[str, list[float]]:
    """The non-null values of `column` by the value of `key` (a missing key: "null")."""
    out: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if row[column] is not None:
            out["null" if row[key] is None else str(row[key])].append(float(row[column]))
    return out
