"""The paper's numbers (idistill/paper.yaml) beside ours: every cell of a report's tables that the
paper has a number for carries it (printed under the row, with ours - paper), and the gains the
paper's text claims get a table of their own."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import yaml

from idistill.tables import Table, Value

AVERAGE = "avg"  # a column that is the mean of the others: compared only where all are there


def paper_blocks(target: str) -> list[dict[str, Any]]:
    """The blocks of idistill/paper.yaml for report `target`: {source, note?, cells?, gains?}."""
    text = resources.files("idistill").joinpath("paper.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text).get(target) or []


def _columns(cells: dict[str, dict[str, float]]) -> set[str]:
    return {col for by_col in cells.values() for col in by_col}


def _compared(table: Table, named: set[str]) -> set[str]:
    """The columns of `table` that the paper's columns `named` compare: an average needs every
    other one in the table (ours would average fewer languages or tasks)."""
    shared = named & set(table.headers)
    if AVERAGE in shared and not named - {AVERAGE} <= set(table.headers):
        shared.discard(AVERAGE)
    return shared


def add_paper_numbers(target: str, tables: Sequence[Table]) -> Table | None:
    """Set Value.paper on every cell of `tables` that the paper has a number for, note the
    source under each table that got one; return the table of the text's gains (ours: the
    row's mean minus the `over` row's, in the first table holding both), or None."""
    blocks = paper_blocks(target)
    named = set().union(*(_columns(b.get("cells") or {}) for b in blocks))
    gains = []
    for block in blocks:
        cells = block.get("cells") or {}
        for table in tables:
            columns = _compared(table, _columns(cells))
            found = False
            for name, values in table.rows:
                for header, value in zip(table.headers, values, strict=True):
                    if header in columns and header in cells.get(name, {}):
                        value.paper = float(cells[name][header])
                        found = True
            if found:
                note = f"; {block['note']}" if block.get("note") else ""
                table.notes.append(f"paper: {block['source']}{note}")
        for claim in block.get("gains") or []:
            gains.append(_gain(claim, block["source"], tables, named))
    if not gains:
        return None
    title = f"{tables[0].title}: the paper's gains" if tables else "the paper's gains"
    return Table(title, ["ours", "paper", "ours - paper"], gains)


def _gain(
    claim: dict[str, Any], source: str, tables: Sequence[Table], named: set[str]
) -> tuple[str, list[Value]]:
    """One row of the gains table: `row` minus `over` in `column`, ours and the paper's
    (`named`: the paper's columns of this target, which an average needs)."""
    row, over, column = str(claim["row"]), str(claim["over"]), str(claim["column"])
    ours = None
    for table in tables:
        rows = dict(table.rows)
        if row in rows and over in rows and column in _compared(table, named | {column}):
            i = table.headers.index(column)
            mine, theirs = rows[row][i].mean, rows[over][i].mean
            ours = None if mine is None or theirs is None else mine - theirs
            break
    paper = float(claim["value"])
    diff = None if ours is None else ours - paper
    label = f"{row} - {over}, {column} (paper: {source})"
    return label, [
        Value([] if ours is None else [ours]),
        Value([paper]),
        Value([] if diff is None else [diff]),
    ]
