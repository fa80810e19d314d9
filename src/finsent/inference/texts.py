"""Texts to classify, read from files (CSV, JSONL, Parquet), stdin or arguments, by one set of rules.

`finsent-predict` and `finsent-score` read their texts here, and so does the download stage the data
set's CSV files: a file that one accepts the others accept, and a file that one refuses the others
refuse with the same line. The rules:

- A file is named by its path (relative to the working folder when it is under it) or its URL, and
  read by its suffix (FORMATS). CSV and JSONL files are UTF-8 (a byte order mark first is dropped; a
  byte that is not UTF-8 is named by its offset), their lines ended by \\n or \\r\\n.
- CSV: the csv module, strictly (finsent.strict_csv): the first record is the header, each row has
  its number of fields, blank lines hold no row, every cell is text ("NA" and "" are texts, not
  missing values); a lone \\r ends a line too (old Mac files).
- JSONL: one JSON object a line; blank lines hold no row; an object without a column asked for, and
  a column whose values are not all of one JSON type (or null), are errors.
- Parquet: pyarrow, which reads only the row groups from the one holding the first row wanted.
- stdin: one text a line, ended by \\n or \\r\\n only: other line breaks (U+2028, form feed, NEL...)
  are characters of a text, so that each line gives exactly one result.
- A text is a string (not a number or null), neither empty nor only whitespace (the pipeline's rule:
  finsent.text.first_blank), without half of a surrogate pair (JSON's "\\ud800" escape, an argument
  that is not UTF-8), which no tokenizer takes.
- Messages: `<file>: line N` (the line a row starts on) in CSV and JSONL, `<file>: row N` (from 1) in
  Parquet, `stdin: line N`, `argument N`; a cell adds `, column '<name>'`.

Standard library only (finsent-predict is in the lean install): pyarrow for Parquet and fsspec for
URLs are imported when such an input is given, and their absence is one line naming the extra.
"""

import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO

from finsent.errors import FinsentError
from finsent.strict_csv import csv_records
from finsent.text import first_blank

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
"""Input formats by file suffix."""

SCALE_EXTRA = "pip install 'finsent[scale]'"
"""What installs pyarrow and fsspec (with Ray) where the lean install lacks them."""

BATCH_ROWS = 10_000
"""Rows a `Rows` holds at most (CSV, JSONL): what is in memory at once while a file is checked."""

LONE_SURROGATE = re.compile("[\ud800-\udfff]")
LONE_CR = re.compile("(?<=\r)(?!\n)")
"""After a carriage return that no line feed follows: where a CSV line ends as well (old Mac files)."""


@dataclass
class Rows:
    """Consecutive rows of one file: each one's position in messages (its line, or its row from 1), its
    text, and the values of the other columns asked for (lists, or pyarrow arrays from Parquet)."""

    first: int
    """The index of the first row in the file, from 0."""
    positions: list[int] = field(default_factory=list)
    texts: list = field(default_factory=list)
    others: dict[str, Sequence] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)


def input_format(name: str) -> str | None:
    return FORMATS.get(os.path.splitext(name)[1].lower())


def shown(source: str) -> str:
    """A file as messages name it: a URL as it is, a local file by its path, relative to the working
    folder when it is under it."""
    if "://" in source and not source.startswith("file://"):
        return source
    path = os.path.abspath(source.removeprefix("file://"))
    relative = os.path.relpath(path)
    return path if relative.startswith(os.pardir + os.sep) else relative


def text_problem(value) -> str | None:
    """What makes `value` no text to classify, if anything."""
    if not isinstance(value, str):
        return "not a string"
    if first_blank([value]) is not None:
        return "empty or only whitespace"
    if LONE_SURROGATE.search(value):
        return "a lone surrogate, not UTF-8 text"
    return None


def check_texts(texts: Sequence, where: str, positions: Sequence[int], column: str | None = None) -> None:
    """Raise FinsentError naming the first of `texts` that is no text to classify: `<where> <position>`
    (`in.csv: line`, `stdin: line`, `argument`), with its column."""
    for position, value in zip(positions, texts, strict=True):
        problem = text_problem(value)
        if problem:
            cell = f", column '{column}'" if column else ""
            raise FinsentError(f"{where} {position}{cell}: {problem}")


def argument_texts(arguments: list[str]) -> list[str]:
    check_texts(arguments, "argument", range(1, len(arguments) + 1))
    return arguments


def stdin_texts() -> list[str]:
    """The lines of stdin, each a text."""
    if sys.stdin is None:  # started with stdin closed
        raise FinsentError("stdin: closed, no texts to classify")
    texts = [line.removesuffix("\n").removesuffix("\r") for line in utf8_lines(sys.stdin.buffer, "stdin")]
    if not texts:
        raise FinsentError("stdin: no lines, nothing to classify")
    check_texts(texts, "stdin: line", range(1, len(texts) + 1))
    return texts


def file_texts(source: str, column: str) -> list[str]:
    """The texts in `column` of the file `source` (a path or URL), every one checked."""
    texts = [text for rows in read_rows(source, column) for text in rows.texts]
    if not texts:
        raise nothing_to_classify([source])
    return texts


def nothing_to_classify(sources: list[str]) -> FinsentError:
    """The error for inputs that hold no row."""
    if len(sources) == 1:
        return FinsentError(f"{shown(sources[0])}: no rows, nothing to classify")
    return FinsentError(f"no rows to classify in any of the {len(sources)} input files")


def read_rows(
    source: str, text_column: str, other_columns: Sequence[str] = (), start: int = 0
) -> Iterator[Rows]:
    """The rows of the file `source` (a local path, or a URL where fsspec is installed) from row index
    `start` on, in batches: every text checked, the columns present (CSV: once each in the header)."""
    name, file_format = shown(source), input_format(source)
    if file_format is None:
        raise FinsentError(f"{name}: not a Parquet, CSV or JSONL file (suffixes: {', '.join(FORMATS)})")
    columns = [text_column, *other_columns]
    with opened(source) as file:
        if file_format == "parquet":
            yield from parquet_rows(file, name, columns, start)
            return
        lines = utf8_lines(file, name)
        records = csv_rows(lines, name, columns) if file_format == "csv" else jsonl_rows(lines, name, columns)
        for rows in batched(records, columns, start):
            check_texts(rows.texts, f"{name}: line", rows.positions, text_column)
            yield rows


@contextmanager
def opened(source: str) -> Iterator[BinaryIO]:
    """The file `source` open for reading bytes; a failure to read it (then or later) as one line."""
    name = shown(source)
    try:
        if "://" in source and not source.startswith("file://"):
            try:
                import fsspec
            except ImportError:
                raise FinsentError(f"{name}: reading a URL needs fsspec: {SCALE_EXTRA}") from None
            try:
                remote = fsspec.open(source, "rb")
            except ImportError as error:  # the protocol's package: s3fs, gcsfs...
                raise FinsentError(f"{name}: {error}") from None
            with remote as file:
                yield file
        else:
            with open(source.removeprefix("file://"), "rb") as file:
                yield file
    except FileNotFoundError:
        raise FinsentError(f"{name}: not found") from None
    except IsADirectoryError:
        raise FinsentError(f"{name}: a folder, not a file") from None
    except OSError as error:  # no permission, a remote store's refusal
        raise FinsentError(f"{name}: cannot read it ({error.strerror or error})") from None


def utf8_lines(file: BinaryIO, name: str) -> Iterator[str]:
    """The lines of `file`, each ended by \\n (kept; the last one may lack it), decoded from UTF-8."""
    offset = 0
    for number, data in enumerate(file):
        try:
            line = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise FinsentError(f"{name}: not UTF-8 (byte {offset + error.start})") from None
        offset += len(data)
        # A byte order mark, which some editors put first (Excel, PowerShell), is no character of the text.
        yield line.removeprefix("\ufeff") if number == 0 else line


def csv_rows(lines: Iterable[str], name: str, columns: list[str]) -> Iterator[tuple[int, list]]:
    """(line, the values of `columns`) of each row of a CSV file."""
    records = csv_records(name, (piece for line in lines for piece in LONE_CR.split(line) if piece))
    _, header = next(records, (0, None))
    if header is None:  # empty, or only whitespace
        return
    for column in columns:
        if column not in header:
            raise FinsentError(f"{name}: missing column '{column}' (columns: {', '.join(header)})")
        if header.count(column) > 1:
            raise FinsentError(
                f"{name}: column '{column}' appears {header.count(column)} times in the header"
            )
    indices = [header.index(column) for column in columns]
    for line, fields in records:
        yield line, [fields[index] for index in indices]


JSON_TYPES = {str: "a string", bool: "a boolean", int: "a number", float: "a number", dict: "an object"}


def jsonl_rows(lines: Iterable[str], name: str, columns: list[str]) -> Iterator[tuple[int, list]]:
    """(line, the values of `columns`) of each JSON object of a JSONL file. The values of each column but
    the first (the texts, checked on their own) are of one JSON type, or null: an output column has one."""
    types: dict[str, tuple[int, str]] = {}  # column: (the first line with a value, its type)
    for number, line in enumerate(lines, start=1):
        if not line.strip():  # the last line end, or a blank line
            continue
        record = json_object(line, f"{name}: line {number}")
        missing = next((column for column in columns if column not in record), None)
        if missing is not None:
            raise FinsentError(
                f"{name}: line {number}: missing column '{missing}' (columns: {', '.join(record)})"
            )
        for column in columns[1:]:
            if record[column] is None:
                continue
            kind = JSON_TYPES.get(type(record[column]), "an array")
            first_line, first_kind = types.setdefault(column, (number, kind))
            if kind != first_kind:
                where = f"{name}: line {number}, column '{column}'"
                raise FinsentError(f"{where}: {kind}, where line {first_line} has {first_kind}")
        yield number, [record[column] for column in columns]


def json_object(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise FinsentError(f"{where}: not JSON ({error.msg}, column {error.colno})") from None
    except RecursionError:
        raise FinsentError(f"{where}: not JSON (nested too deeply)") from None
    if not isinstance(record, dict):
        raise FinsentError(f"{where}: not a JSON object")
    return record


def batched(records: Iterator[tuple[int, list]], columns: list[str], start: int) -> Iterator[Rows]:
    """The records (position, the values of `columns`) from index `start` on, BATCH_ROWS a batch."""
    rows = Rows(start, others={column: [] for column in columns[1:]})
    for index, (position, values) in enumerate(records):
        if index < start:
            continue
        rows.positions.append(position)
        rows.texts.append(values[0])
        for column, value in zip(columns[1:], values[1:], strict=True):
            rows.others[column].append(value)
        if len(rows) == BATCH_ROWS:
            yield rows
            rows = Rows(index + 1, others={column: [] for column in columns[1:]})
    if len(rows):
        yield rows


def parquet_rows(file: BinaryIO, name: str, columns: list[str], start: int) -> Iterator[Rows]:
    """The rows of a Parquet file from index `start` on, read from the row group holding it."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise FinsentError(f"{name}: reading Parquet needs pyarrow: {SCALE_EXTRA}") from None
    try:
        parquet = pq.ParquetFile(file)
        names = parquet.schema_arrow.names
        for column in columns:
            if column not in names:
                raise FinsentError(f"{name}: missing column '{column}' (columns: {', '.join(names)})")
            if names.count(column) > 1:
                raise FinsentError(
                    f"{name}: column '{column}' appears {names.count(column)} times in the schema"
                )
        first_row, groups = 0, []
        for index in range(parquet.num_row_groups):
            group_rows = parquet.metadata.row_group(index).num_rows
            if groups or first_row + group_rows > start:
                groups.append(index)
            else:
                first_row += group_rows
        batches = parquet.iter_batches(BATCH_ROWS, row_groups=groups, columns=columns) if groups else []
        for batch in batches:
            skip = max(start - first_row, 0)
            rows = Rows(first_row + skip, list(range(first_row + skip + 1, first_row + batch.num_rows + 1)))
            rows.texts = parquet_texts(batch.column(columns[0])[skip:], name, rows.positions, columns[0])
            rows.others = {column: batch.column(column)[skip:] for column in columns[1:]}
            check_texts(rows.texts, f"{name}: row", rows.positions, columns[0])
            first_row += batch.num_rows
            yield rows
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
        raise FinsentError(f"{name}: not a readable Parquet file ({reason})") from None


def parquet_texts(values, name: str, positions: list[int], column: str) -> list:
    """A Parquet column's values as Python objects; a string that is not UTF-8 named by its row."""
    try:
        return values.to_pylist()
    except UnicodeDecodeError:
        for position, value in zip(positions, values, strict=True):
            try:
                value.as_py()
            except UnicodeDecodeError:
                raise FinsentError(f"{name}: row {position}, column '{column}': not UTF-8") from None
        raise
