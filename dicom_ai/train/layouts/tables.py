"""Reading label CSVs so that every later error can name the file and line it came from."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from dicom_ai.train.layouts.samples import LayoutError


@dataclass(frozen=True)
class Row:
    """One CSV record and the line it ends on (1 = the header)."""

    line: int
    values: dict[str, str]

    def where(self, path: Path) -> str:
        return f"{path} line {self.line}"


def read_rows(path: Path, required: tuple[str, ...] = ()) -> tuple[tuple[str, ...], list[Row]]:
    """Header and rows of a comma, semicolon or tab separated file; LayoutError names missing columns."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LayoutError(f"{path}: cannot read the CSV file: {exc}") from exc
    first = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=first.count)
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    try:
        header = tuple(name.strip() for name in (reader.fieldnames or ()))
        reader.fieldnames = list(header)
        rows = []
        for values in reader:
            if None in values:
                raise LayoutError(f"{path} line {reader.line_num}: more fields than the header's {len(header)}")
            rows.append(Row(reader.line_num, {k: (v or "").strip() for k, v in values.items()}))
    except csv.Error as exc:
        raise LayoutError(f"{path} line {reader.line_num}: not valid CSV: {exc}") from exc
    if not header:
        raise LayoutError(f"{path}: the CSV file is empty (a header line is needed)")
    missing = [name for name in required if name not in header]
    if missing:
        raise LayoutError(f"{path}: column(s) {', '.join(missing)} missing; the header has {', '.join(header)}")
    return header, rows
