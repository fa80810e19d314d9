"""CSV read strictly: every row has the header's fields, and an error names the file and line.

The csv module rather than pandas.read_csv: pandas takes the first column as the index when rows have one
field more than the header (a row ending in a comma), and fills a short row with empty cells, both
without a word, so that a text is read from the wrong column.
"""

import csv
import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from finsent.errors import FinsentError

if TYPE_CHECKING:
    import pandas as pd

FIELD_LIMIT = 2**31 - 1
"""The longest cell read, in characters: a text is clipped before tokenizing, not refused here (the csv
module's default, 131,072, would refuse it); the largest the csv module takes on every platform."""


def csv_records(source: str, lines: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    """Each record of a CSV text given line by line (each with its line end), with the line it starts
    on: the header first, then the rows, each with the header's number of fields. Blank lines hold no
    record, nor do lines of only whitespace before the header."""
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
    reader = csv.reader(_blank_before_header(lines), strict=True)
    line, width = 0, None  # `line`: the last line read
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise FinsentError(f"{source}: line {line + 1}: not a readable CSV file ({error})") from None
        if fields:
            width = width or len(fields)
            if len(fields) != width:
                raise FinsentError(
                    f"{source}: line {line + 1}: field count {len(fields)}, the header's {width}"
                )
            yield line + 1, fields
        line = reader.line_num


def _blank_before_header(lines: Iterable[str]) -> Iterator[str]:
    """`lines`, those of only whitespace before the first other one made empty (as a file of only
    whitespace has no header), the line count kept."""
    lines = iter(lines)
    for line in lines:
        if line.strip():
            yield line
            break
        yield "\n"
    yield from lines


def read_csv_frame(path: Path | str, content: str) -> "pd.DataFrame":
    """The CSV text `content` (the text of `path`) as a DataFrame of strings, one column a header field
    (names must be unique)."""
    import pandas as pd

    records = [fields for _, fields in csv_records(str(path), io.StringIO(content, newline=""))]
    if not records:
        raise FinsentError(f"{path}: empty, not even a header")
    header, rows = records[0], records[1:]
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise FinsentError(f"{path}: duplicate column(s) {', '.join(map(repr, duplicates))}")
    return pd.DataFrame(rows, columns=header, dtype=str)
