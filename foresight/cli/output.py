"""How commands print results: readable tables by default, ``--json`` and ``--csv`` on request."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from google.protobuf.message import Message
from rich.table import Table

from foresight.cli.app import console
from foresight.client import to_plain

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print JSON: typed values, every field (zeros included).")
]
CsvFlag = Annotated[bool, typer.Option("--csv", help="Print the rows as CSV.")]


@dataclass(frozen=True)
class Rows:
    """A table of results: the rows a `--csv` prints and the default table shows."""

    columns: Sequence[str]
    rows: Sequence[Sequence[Any]] = field(default_factory=list)
    title: str | None = None


def emit(
    message: Message,
    *,
    as_json: bool = False,
    as_csv: bool = False,
    rows: Rows | None = None,
    summary: str | None = None,
    extra: Sequence[Rows] = (),
) -> None:
    """Print a result: JSON (the whole message), CSV (`rows`) or a summary line and tables."""
    if as_json and as_csv:
        raise typer.BadParameter("use --json or --csv, not both")
    if as_json:
        print_json(to_plain(message))
        return
    if as_csv:
        if rows is None:
            raise typer.BadParameter("this command has no rows to print as CSV; use --json")
        write_csv(rows)
        return
    if summary:
        console.print(summary, highlight=False)
    tables = [t for t in (rows, *extra) if t is not None]
    if not tables and summary is None:
        tables = [fields(to_plain(message))]
    for t in tables:
        console.print(table(t))


def print_json(data: Any) -> None:
    """JSON on stdout (never wrapped, whatever the terminal)."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_csv(rows: Rows) -> None:
    """Rows as CSV on stdout, values unformatted."""
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(rows.columns)
    writer.writerows(rows.rows)


def fields(plain: dict[str, Any], title: str | None = None) -> Rows:
    """A two-column table of a message's fields."""
    return Rows(("field", "value"), [(k, _compact(v)) for k, v in plain.items()], title)


def _compact(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value


def cell(value: Any) -> str:
    """A value as table text: thousands separators, four significant digits, '-' for none."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(rows: Rows) -> Table:
    """A rich table of rows."""
    t = Table(*rows.columns, title=rows.title, title_justify="left")
    for row in rows.rows:
        t.add_row(*(cell(v) for v in row))
    return t
