"""CSV files read strictly: every row has the header's fields, and an error names the file and line.

The csv module rather than pandas.read_csv: pandas takes the first column as the index when rows have one
field more than the header (a row ending in a comma), and fills a short row with empty cells, both
without a word, so that a text is read from the wrong column.
"""

import csv
import io
from pathlib import Path

import pandas as pd

from finsent.errors import FinsentError


def read_csv_rows(path: Path | str, content: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header of `content` (the text of `path`) and each row with the line it starts on; blank
    lines hold no row."""
    # A cell may be as long as the file (a text is clipped before tokenizing, not refused here).
    csv.field_size_limit(max(csv.field_size_limit(), len(content)))
    reader = csv.reader(io.StringIO(content, newline=""), strict=True)
    records, line = [], 0  # (first line, fields); `line`: the last line read
    try:
        for fields in reader:
            if fields:
                records.append((line + 1, fields))
            line = reader.line_num
    except csv.Error as error:
        raise FinsentError(f"{path}: line {line + 1}: not a readable CSV file ({error})") from None
    if not records:
        raise FinsentError(f"{path}: empty, not even a header")
    (_, header), rows = records[0], records[1:]
    for number, fields in rows:
        if len(fields) != len(header):
            raise FinsentError(
                f"{path}: line {number}: field count {len(fields)}, the header's {len(header)}"
            )
    return header, rows


def read_csv_frame(path: Path | str, content: str) -> pd.DataFrame:
    """`read_csv_rows` as a DataFrame of strings, one column a header field (names must be unique)."""
    header, rows = read_csv_rows(path, content)
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise FinsentError(f"{path}: duplicate column(s) {', '.join(map(repr, duplicates))}")
    return pd.DataFrame([fields for _, fields in rows], columns=header, dtype=str)
