"""Reading the ads that `directory-sync` pushes: JSON Lines or CSV, one ad a line.

JSON Lines (`.jsonl`, `.ndjson`): each line an object with `external_id` and the fields
of PUT /v1/ads/{external_id} as they are in the API (`"location": {"lat": .., "lon": ..}`,
`"tags": [..]`). Blank lines are skipped, and so is a byte order mark starting the file.

CSV (`.csv`, UTF-8, a header line first): the columns of `CSV_COLUMNS`; nested fields by
dotted names (`location.lat`, `price.amount`), lists in one cell separated by
`LIST_SEPARATOR` (`bike|tools`), `accepts_contact` as true/false. An empty cell leaves the
field out (the API's default applies). Columns may come in any order; an unknown column
stops the run before anything is sent, since every row would lose that field.

A row that cannot be read (bad JSON, a bad number, no external_id) is yielded with its
problem and line number, never dropped: the sync reports it as rejected. A CSV row with
more or fewer cells than the header names no ad, not even by the cell where its
external_id would be: it may be cut short (`tr-00` of `tr-0005`) or shifted."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import msgspec

LIST_SEPARATOR = "|"
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
# What Windows tools (PowerShell's Out-File, Notepad) often start a UTF-8 file with.
BYTE_ORDER_MARK = b"\xef\xbb\xbf"
CSV_SUFFIXES = frozenset({".csv"})


class InputError(Exception):
    """The input as a whole cannot be used (unreadable, unknown format, bad header)."""


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One row of the input: its fields (`external_id` among them), or why it could not
    be read (then `fields` holds its external_id alone, when that much could be read).
    `line` is where it starts in the file (for an iterable: its position from 1)."""

    line: int
    fields: dict[str, Any] | None
    problem: str | None = None


class Cell(Enum):
    TEXT = "text"
    NUMBER = "number"
    LIST = "list"
    BOOLEAN = "boolean"


# The fields of PUT /v1/ads/{external_id}, flattened, with how each cell is read.
CSV_COLUMNS: dict[str, Cell] = {
    "external_id": Cell.TEXT,
    "kind": Cell.TEXT,
    "title": Cell.TEXT,
    "body": Cell.TEXT,
    "category": Cell.TEXT,
    "tags": Cell.LIST,
    "location.lat": Cell.NUMBER,
    "location.lon": Cell.NUMBER,
    "privacy": Cell.TEXT,
    "visibility": Cell.TEXT,
    "currencies": Cell.LIST,
    "price.amount": Cell.TEXT,  # a decimal string in the API: kept exactly as written
    "price.currency": Cell.TEXT,
    "price.unit": Cell.TEXT,
    "language": Cell.TEXT,
    "images": Cell.LIST,
    "expires_at": Cell.TEXT,
    "member": Cell.TEXT,
    "ledger_account": Cell.TEXT,
    "accepts_contact": Cell.BOOLEAN,
}
BOOLEANS = {"true": True, "false": False}


def read_rows(path: Path) -> Iterator[SourceRow]:
    """The rows of a JSON Lines or CSV file, chosen by its suffix."""
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return read_jsonl(path)
    if suffix in CSV_SUFFIXES:
        return read_csv(path)
    raise InputError(
        f"{path}: unknown format {suffix or '(no suffix)'!r}; expected .jsonl, .ndjson or .csv"
    )


def read_jsonl(path: Path) -> Iterator[SourceRow]:
    decoder = msgspec.json.Decoder()
    # Bytes straight to msgspec: it checks the UTF-8 itself, so a bad byte costs one line.
    with _open(path, mode="rb") as lines:
        for number, line in enumerate(lines, start=1):
            if number == 1:
                line = line.removeprefix(BYTE_ORDER_MARK)
            if not line.strip():
                continue
            try:
                fields = decoder.decode(line)
            except msgspec.DecodeError as error:
                yield SourceRow(number, None, f"not valid JSON (or not UTF-8): {error}")
                continue
            if not isinstance(fields, dict):
                yield SourceRow(number, None, "expected a JSON object, one ad a line")
                continue
            yield SourceRow(number, fields)


def read_csv(path: Path) -> Iterator[SourceRow]:
    # utf-8-sig: spreadsheets often start a UTF-8 file with a byte order mark.
    with _open(path, mode="r", newline="", encoding="utf-8-sig") as text:
        reader = csv.reader(text, strict=True)
        try:
            header = next(reader, None)
            if header is None:
                return
            columns = _columns(header)
            id_position = [name for name, _ in columns].index("external_id")
            ended_at = reader.line_num
            for cells in reader:
                # A quoted cell may span lines: a row starts where the previous one ended.
                line, ended_at = ended_at + 1, reader.line_num
                if not cells:
                    continue
                yield _csv_row(line, columns, cells, id_position)
        except csv.Error as error:
            raise InputError(f"{path}, line {reader.line_num}: {error}") from error
        except UnicodeDecodeError as error:
            raise InputError(
                f"{path}, after line {reader.line_num}: not UTF-8 ({error})"
            ) from error


def _columns(header: list[str]) -> list[tuple[str, Cell]]:
    names = [name.strip() for name in header]
    unknown = [name for name in names if name not in CSV_COLUMNS]
    if unknown:
        raise InputError(
            f"line 1: unknown column(s) {', '.join(map(repr, unknown))}; "
            f"the columns are {', '.join(CSV_COLUMNS)}"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(f"line 1: column(s) given twice: {', '.join(repeated)}")
    if "external_id" not in names:
        raise InputError("line 1: the external_id column is missing")
    return [(name, CSV_COLUMNS[name]) for name in names]


def _csv_row(
    line: int, columns: list[tuple[str, Cell]], cells: list[str], id_position: int
) -> SourceRow:
    if len(cells) != len(columns):
        # Cut short (an export that stopped mid-row) or with an unquoted separator: which
        # cell is which is unknown, so the row names no ad, and while it is there no ad is
        # taken for gone (the sync holds deletes back; --replace refuses to start).
        return SourceRow(
            line,
            None,
            f"{len(cells)} cells where the header has {len(columns)}: which cell is the "
            "external_id cannot be told",
        )
    # A row that cannot be read still names its ad: the sync then keeps the directory's
    # copy of that ad as it was instead of taking it for gone.
    external_id = cells[id_position]
    named = {"external_id": external_id} if external_id else None
    fields: dict[str, Any] = {}
    for (name, cell), text in zip(columns, cells, strict=True):
        if text == "":
            continue
        try:
            value = _cell_value(cell, text)
        except ValueError as error:
            return SourceRow(line, named, f"{name}: {error}")
        parent, dot, child = name.partition(".")
        if dot:
            fields.setdefault(parent, {})[child] = value
        else:
            fields[name] = value
    return SourceRow(line, fields)


def _cell_value(cell: Cell, text: str) -> Any:
    if cell is Cell.TEXT:
        return text
    if cell is Cell.NUMBER:
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"{text!r} is not a finite number")
        return number
    if cell is Cell.BOOLEAN:
        if text.lower() not in BOOLEANS:
            raise ValueError(f"{text!r} is not true or false")
        return BOOLEANS[text.lower()]
    items = text.split(LIST_SEPARATOR)
    if any(not item for item in items):
        raise ValueError(f"{text!r} has an empty item (items are separated by {LIST_SEPARATOR!r})")
    return items


def _open(path: Path, *, mode: str, newline: str | None = None, encoding: str | None = None):
    try:
        return path.open(mode, encoding=encoding, newline=newline)
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror}") from error
