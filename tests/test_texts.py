"""The one reader of texts (finsent.inference.texts): each bad input once, through finsent-predict and
finsent-score alike (the same line from both), and what it accepts (spreadsheets' CSV, old Mac line
ends, Parquet row groups, URLs)."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SOURCE_ENV, run_here

from finsent.errors import FinsentError
from finsent.inference import batch, predict
from finsent.inference.texts import BATCH_ROWS, FORMATS, SCALE_EXTRA, read_rows, stdin_texts


def parquet_bytes(table: pa.Table, **options) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **options)
    return sink.getvalue().to_pybytes()


NOT_UTF8_STRING = pa.array([b"ok", b"caf\xe9"], pa.binary()).view(pa.string())
"""A Parquet string column whose second value is not UTF-8, as another writer may leave one."""

BAD_FILES = [  # (file name, content, the message after "error: "; one ending in "(" is followed by a reason)
    ("nowhere.csv", None, "nowhere.csv: not found"),
    (
        "notes.txt",
        b"text\nhello\n",
        f"notes.txt: not a Parquet, CSV or JSONL file (suffixes: {', '.join(FORMATS)})",
    ),
    ("in.csv", b"", "in.csv: no rows, nothing to classify"),
    ("in.csv", b" \n\t\n\n", "in.csv: no rows, nothing to classify"),
    ("in.csv", b"id,text\n", "in.csv: no rows, nothing to classify"),
    ("in.jsonl", b"\n  \n", "in.jsonl: no rows, nothing to classify"),
    ("in.csv", b"id,tweet\n1,hello\n", "in.csv: missing column 'text' (columns: id, tweet)"),
    ("in.csv", b"text\ncaf\xe9\n", "in.csv: not UTF-8 (byte 8)"),
    # A row with a field more than the header: pandas took `text` as the index, and classified "1".
    ("in.csv", b"text,id\n$AAPL soars,1,\n", "in.csv: line 2: field count 3, the header's 2"),
    ("in.csv", b"text,id\nok,1\n\nnot ok\n", "in.csv: line 4: field count 1, the header's 2"),
    ("in.csv", b"id,text,text\n1,a,b\n", "in.csv: column 'text' appears 2 times in the header"),
    ("in.csv", b'text\n"never closed\n', "in.csv: line 2: not a readable CSV file (unexpected end of data)"),
    ("in.csv", b'text\nok\n"  "\n', "in.csv: line 3, column 'text': empty or only whitespace"),
    # The byte order mark is no part of the header's first name; CRLF and CR alone end lines.
    (
        "in.csv",
        b"\xef\xbb\xbftext\r\nok\r\n\t\r\n",
        "in.csv: line 3, column 'text': empty or only whitespace",
    ),
    ("in.csv", b'text\r"a\rb"\r \r', "in.csv: line 4, column 'text': empty or only whitespace"),
    ("in.jsonl", b'{"text": "ok"}\n{"text": 3}\n', "in.jsonl: line 2, column 'text': not a string"),
    ("in.jsonl", b'{"text": "ok"}\n{"text": null}\n', "in.jsonl: line 2, column 'text': not a string"),
    (
        "in.jsonl",
        b'{"text": "ok"}\n{"text": ""}\n',
        "in.jsonl: line 2, column 'text': empty or only whitespace",
    ),
    (
        "in.jsonl",
        b'{"text": "ok"}\n{"text": "ok\\ud800"}\n',
        "in.jsonl: line 2, column 'text': a lone surrogate, not UTF-8 text",
    ),
    ("in.jsonl", b'{"text": "ok"}\n\n["ok"]\n', "in.jsonl: line 3: not a JSON object"),
    (
        "in.jsonl",
        b'{"text": "ok"}\n{"tweet": "ok"}\n',
        "in.jsonl: line 2: missing column 'text' (columns: tweet)",
    ),
    ("in.jsonl", b'{"text": "ok"} x\n', "in.jsonl: line 1: not JSON (Extra data, column 16)"),
    ("in.jsonl", b"[" * 100_000 + b"\n", "in.jsonl: line 1: not JSON (nested too deeply)"),
    ("in.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "in.jsonl: not UTF-8 (byte 28)"),
    ("in.parquet", b"not parquet", "in.parquet: not a readable Parquet file ("),
    (
        "in.parquet",
        parquet_bytes(pa.table({"id": [1], "tweet": ["ok"]})),
        "in.parquet: missing column 'text' (columns: id, tweet)",
    ),
    (
        "in.parquet",
        parquet_bytes(pa.table({"text": ["ok", None]})),
        "in.parquet: row 2, column 'text': not a string",
    ),
    (
        "in.parquet",
        parquet_bytes(pa.table({"text": [1, 2]})),
        "in.parquet: row 1, column 'text': not a string",
    ),
    (
        "in.parquet",
        parquet_bytes(pa.table({"text": ["ok", "ok", " \n"]}), row_group_size=2),
        "in.parquet: row 3, column 'text': empty or only whitespace",
    ),
    (
        "in.parquet",
        parquet_bytes(pa.table({"text": NOT_UTF8_STRING})),
        "in.parquet: row 2, column 'text': not UTF-8",
    ),
]


BAD_URLS = [  # (URL, message): a protocol whose package is not installed (dropbox: dropboxdrivefs)
    ("dropbox://folder/in.csv", "dropbox://folder/in.csv: DropboxFileSystem requires "),
]


@pytest.mark.parametrize(
    ("name", "content", "message"), [*BAD_FILES, *((url, None, m) for url, m in BAD_URLS)]
)
def test_a_bad_file_is_the_same_line_from_both_commands(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    path = name if "://" in name else str(tmp_path / name)
    from_predict = run_here(predict.cli, ["finsent-predict", "-i", path], tmp_path)
    from_score = run_here(batch.cli, ["finsent-score", path, "-o", str(tmp_path / "out")], tmp_path)
    for result in (from_predict, from_score):
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr.startswith(f"error: {message}")
        if not message.endswith(" "):  # else: the package's own words follow
            assert result.stderr.endswith(")\n" if message.endswith("(") else f"error: {message}\n")
        assert result.stderr.count("\n") == 1
    assert from_predict.stderr == from_score.stderr
    assert not (tmp_path / "out").exists()


def test_spreadsheet_csv_is_read_as_written(tmp_path):
    """A byte order mark, CRLF ends, a blank line, a quoted text over two lines, other Unicode line
    breaks inside a text, a text longer than the csv module's default field limit, cells that pandas
    would read as missing."""
    texts = ["$AAPL beats", "line one\r\nline two, still one", "up\u2028down\x0c", "$AAPL up " * 20_000, "NA"]
    content = "\ufefftext,id\r\n" + "".join(
        f'"{text}",{i}\r\n' + ("\r\n" if i == 1 else "") for i, text in enumerate(texts)
    )
    (tmp_path / "in.csv").write_text(content, encoding="utf-8", newline="")
    [rows] = read_rows(str(tmp_path / "in.csv"), "text", ["id"])
    assert rows.texts == texts
    assert rows.others == {"id": ["0", "1", "2", "3", "4"]}
    assert rows.positions == [2, 3, 6, 7, 8]  # the line each row starts on


def test_rows_from_an_index_come_in_batches_with_their_positions(tmp_path):
    count = BATCH_ROWS + 5
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"text": f"t{i}", "id": i}) + "\n\n" for i in range(count))
    )
    batches = list(read_rows(str(tmp_path / "in.jsonl"), "text", ["id"], start=3))
    assert [(rows.first, len(rows)) for rows in batches] == [(3, BATCH_ROWS), (BATCH_ROWS + 3, 2)]
    assert batches[1].texts == [f"t{count - 2}", f"t{count - 1}"]
    assert batches[1].positions == [2 * count - 3, 2 * count - 1]  # every other line is blank
    assert batches[1].others == {"id": [count - 2, count - 1]}


def test_parquet_is_read_from_the_row_group_holding_the_first_row_wanted(tmp_path):
    table = pa.table({"text": [f"t{i}" for i in range(10)], "id": list(range(10))})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=4)
    [rows] = read_rows(str(tmp_path / "in.parquet"), "text", ["id"], start=6)
    assert (rows.first, rows.texts, rows.positions) == (6, ["t6", "t7", "t8", "t9"], [7, 8, 9, 10])
    assert rows.others["id"].to_pylist() == [6, 7, 8, 9]
    assert list(read_rows(str(tmp_path / "in.parquet"), "text", start=10)) == []


def test_jsonl_columns_besides_the_texts_keep_one_type(tmp_path):
    (tmp_path / "in.jsonl").write_text(
        '{"text": "a", "id": 1}\n{"text": "b", "id": null}\n{"text": "c", "id": "3"}\n'
    )
    with pytest.raises(FinsentError) as error:
        list(read_rows(str(tmp_path / "in.jsonl"), "text", ["id"]))
    assert (
        str(error.value)
        == f"{tmp_path / 'in.jsonl'}: line 3, column 'id': a string, where line 1 has a number"
    )


def test_a_url_is_read_through_fsspec():
    import fsspec

    with fsspec.open("memory://texts/in.csv", "wb") as file:
        file.write(b"text\n$AAPL up\n")
    [rows] = read_rows("memory://texts/in.csv", "text")
    assert rows.texts == ["$AAPL up"]
    with pytest.raises(FinsentError, match=r"^memory://texts/gone\.csv: not found$"):
        list(read_rows("memory://texts/gone.csv", "text"))


def run_without(modules: list[str], code: str, cwd) -> subprocess.CompletedProcess:
    """`code` run in a Python where `modules` cannot be imported, as in the lean install."""
    hide = "".join(f"sys.modules[{name!r}] = None; " for name in modules)
    return subprocess.run(
        [sys.executable, "-c", f"import sys; {hide}{code}"],
        cwd=cwd,
        env={**os.environ, **SOURCE_ENV},
        capture_output=True,
        text=True,
    )


def test_parquet_and_urls_without_the_scale_extra_are_one_line_naming_it(tmp_path):
    (tmp_path / "in.parquet").write_bytes(parquet_bytes(pa.table({"text": ["ok"]})))
    code = (
        "from finsent.inference.predict import cli; sys.argv = ['finsent-predict', '-i', sys.argv[1]]; cli()"
    )
    result = run_without(["pyarrow"], code.replace("sys.argv[1]", "'in.parquet'"), tmp_path)
    assert (result.returncode, result.stderr) == (
        1,
        f"error: in.parquet: reading Parquet needs pyarrow: {SCALE_EXTRA}\n",
    )
    result = run_without(["fsspec"], code.replace("sys.argv[1]", "'s3://bucket/in.csv'"), tmp_path)
    assert (result.returncode, result.stderr) == (
        1,
        f"error: s3://bucket/in.csv: reading a URL needs fsspec: {SCALE_EXTRA}\n",
    )


def test_the_reader_imports_nothing_beyond_the_standard_library():
    heavy = "{'numpy', 'pandas', 'pyarrow', 'fsspec'}"
    result = run_without(
        [], f"import finsent.inference.texts; print(sorted(set(sys.modules) & {heavy}))", "."
    )
    assert result.stdout == "[]\n", result.stderr


STDIN_CASES = [
    (b"", "stdin: no lines, nothing to classify"),
    (b"caf\xe9\n", "stdin: not UTF-8 (byte 3)"),
    (b"ok\n \t\nfine\n", "stdin: line 2: empty or only whitespace"),
    (b"ok\n\nfine\n", "stdin: line 2: empty or only whitespace"),
    (b"ok\r\n\r\n", "stdin: line 2: empty or only whitespace"),
    (b"ok\n\xed\xa0\x80\n", "stdin: not UTF-8 (byte 3)"),  # a surrogate encoded: no UTF-8
]


@pytest.mark.parametrize(("stdin", "message"), STDIN_CASES)
def test_bad_stdin_is_one_line(tmp_path, stdin, message):
    result = run_here(predict.cli, ["finsent-predict"], tmp_path, stdin)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"error: {message}\n")


def test_stdin_lines_end_at_line_feeds_only(monkeypatch):
    import io

    breaks = "\u2028\u2029\x85\x0c\x0b\x1c\x1d\x1e\r"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(f"\ufeffa{breaks}b\r\nc\n".encode())))
    assert stdin_texts() == [f"a{breaks}b", "c"]
