"""The `finsent-predict` command: classify texts from arguments, stdin lines, or a CSV or JSONL file."""

import argparse
import csv
import io
import json
import os
import re
import stat
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from finsent.atomic import atomic_file
from finsent.cli import run_cli
from finsent.config import BACKENDS, LABELS, PROBABILITY_COLUMNS
from finsent.errors import FinsentError
from finsent.inference.api.schemas import PROBABILITY_DECIMALS, class_probabilities
from finsent.inference.predictors import FP32_FILE, INT8_FILES, load_predictor
from finsent.inference.settings import PredictorSettings, load_settings
from finsent.strict_csv import read_csv_rows
from finsent.text import first_blank

PROGRESS_MIN_ROWS = 500
"""Files with more rows than this show a progress bar on stderr."""

CHUNK_TEXTS = 512
"""Texts handed to the model at a time (it batches them itself): the progress bar's step."""

LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def read_texts_file(path: Path, column: str) -> tuple[list[str], list[int]]:
    """The `column` of a CSV file, or of a JSONL file (one object a line), and the line each text is on."""
    try:
        content = decode_utf8(path.read_bytes(), path)
    except FileNotFoundError:
        raise FinsentError(f"{path}: file not found") from None
    except OSError as error:  # a folder, no permission
        raise FinsentError(f"{path}: cannot read it ({error.strerror})") from None
    if not content.strip():
        raise FinsentError(f"{path}: empty or only whitespace, nothing to classify")
    if path.suffix.lower() == ".csv":
        return read_csv_column(path, content, column)
    return read_jsonl_column(path, content, column)


def read_csv_column(path: Path, content: str, column: str) -> tuple[list[str], list[int]]:
    """The `column` of every row, and the line each row starts on (strict_csv: no row shifts its cells)."""
    header, rows = read_csv_rows(path, content)
    if column not in header:
        raise FinsentError(f"{path}: missing column '{column}' (columns: {', '.join(header)})")
    if header.count(column) > 1:
        raise FinsentError(f"{path}: column '{column}' appears {header.count(column)} times in the header")
    if not rows:
        raise FinsentError(f"{path}: no rows, nothing to classify")
    index = header.index(column)
    return [fields[index] for _, fields in rows], [number for number, _ in rows]


def read_jsonl_column(path: Path, content: str, column: str) -> tuple[list[str], list[int]]:
    """One JSON object a line; blank lines are skipped."""
    texts, lines = [], []
    for number, line in enumerate(content.split("\n"), start=1):
        if not line.strip():  # the last newline, or a blank line
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise FinsentError(
                f"{path}: line {number}: not JSON ({error.msg}, column {error.colno})"
            ) from None
        except RecursionError:
            raise FinsentError(f"{path}: line {number}: not JSON (nested too deeply)") from None
        if not isinstance(record, dict):
            raise FinsentError(f"{path}: line {number}: not a JSON object")
        if column not in record:
            raise FinsentError(
                f"{path}: line {number}: missing column '{column}' (columns: {', '.join(record)})"
            )
        if not isinstance(record[column], str):
            raise FinsentError(f"{path}: line {number}: column '{column}' is not a string")
        texts.append(record[column])
        lines.append(number)
    return texts, lines


def read_stdin_lines() -> list[str]:
    """The lines of stdin, ended by \\n or \\r\\n only: other line breaks (U+2028, form feed,
    NEL...) are characters of a text, so that each line gives exactly one result."""
    if sys.stdin is None:  # started with stdin closed
        raise FinsentError("stdin: closed, no texts to classify")
    lines = decode_utf8(sys.stdin.buffer.read(), "stdin").split("\n")
    if lines[-1] == "":  # after the last newline
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def decode_utf8(data: bytes, source: Path | str) -> str:
    """`data` as text, without the byte order mark that some editors put first (Excel, PowerShell)."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        raise FinsentError(f"{source}: not UTF-8 (byte {error.start})") from None


def first_lone_surrogate(texts: list[str]) -> int | None:
    """The index of the first text holding half a surrogate pair, which no encoder can take, if any.

    Decoding leaves them: JSON's "\\ud800" escape, or an argument that is not UTF-8 (Python decodes
    arguments with surrogateescape)."""
    return next((i for i, text in enumerate(texts) if LONE_SURROGATE.search(text)), None)


def writes_over_input(output: Path, input_file: Path | None) -> bool:
    """Whether `output` is the input (the --input-file, else what stdin reads), through any link."""
    try:
        written = output.stat()
        read = input_file.stat() if input_file is not None else os.fstat(0)  # stdin
    except OSError:  # not there yet: nothing to overwrite
        return False
    return stat.S_ISREG(read.st_mode) and os.path.samestat(written, read)


def format_predictions(probabilities: np.ndarray, output_format: str) -> str:
    """One line per text, in order: its label and the probability of each class, as JSONL or CSV."""
    labels = np.array(LABELS)[probabilities.argmax(axis=1)]
    if output_format == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["label", *PROBABILITY_COLUMNS])
        writer.writerows(
            [label, *(f"{p:.{PROBABILITY_DECIMALS}f}" for p in row)]
            for label, row in zip(labels, probabilities, strict=True)
        )
        return out.getvalue()
    return "".join(
        json.dumps({"label": label, "probabilities": class_probabilities(row)}) + "\n"
        for label, row in zip(labels, probabilities, strict=True)
    )


def positive_int(value: str) -> int:
    """An argparse type: a bad value is a usage error (exit status 2) naming the flag."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def main() -> None:
    # Flags first, settings after (flags override them): `--help` and a bad flag need no settings.
    parser = argparse.ArgumentParser(
        prog="finsent-predict",
        description="Classify finance tweets as Bearish, Bullish or Neutral: texts given as arguments, "
        "else the lines of --input-file, else the lines of stdin. One result per text, in input order.",
    )
    parser.add_argument("texts", nargs="*", help="texts to classify")
    parser.add_argument("-i", "--input-file", type=Path, help="CSV or JSONL (by suffix) with a text column")
    parser.add_argument("-c", "--text-column", default="text", help="column of --input-file (default: text)")
    parser.add_argument(
        "-o", "--output", type=Path, help="file to write (only once all is done); default stdout"
    )
    parser.add_argument(
        "-f",
        "--format",
        choices=["jsonl", "csv"],
        help="output format (default: by --output suffix, else jsonl)",
    )
    parser.add_argument(
        "-b",
        "--backend",
        choices=BACKENDS,
        help=f"runtime and model (default: inference.backend): ONNX from --exported-dir "
        f"({FP32_FILE}, {' or '.join(INT8_FILES.values())}), PyTorch from --model-dir",
    )
    parser.add_argument("--model-dir", type=Path, help="train stage output (default: inference.model_dir)")
    parser.add_argument(
        "--exported-dir", type=Path, help="export stage output (default: inference.exported_dir)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, help="texts a model run, at most (default: inference.batch_size)"
    )
    parser.epilog = (
        "Defaults come from FINSENT_<SETTING>, else params.yaml's inference section, else the built-in "
        "default (finsent/inference/settings.py)."
    )
    args = parser.parse_args()
    settings = load_settings(
        PredictorSettings,
        backend=args.backend,
        model_dir=args.model_dir,
        exported_dir=args.exported_dir,
        batch_size=args.batch_size,
    )

    if args.texts and args.input_file:
        parser.error("give texts as arguments or --input-file, not both")
    if args.output is not None and args.output.is_dir():
        parser.error(f"argument -o/--output: {args.output} is a folder; give a file to write")
    if args.output is not None and not args.texts and writes_over_input(args.output, args.input_file):
        parser.error(f"argument -o/--output: {args.output} is the input file; give another file to write")
    # Where each text came from, for an error: "argument 2", "<file>: line 3", "stdin: line 2".
    if args.texts:
        texts, where, numbers = args.texts, "argument", range(1, len(args.texts) + 1)
    elif args.input_file:
        texts, numbers = read_texts_file(args.input_file, args.text_column)
        where = f"{args.input_file}: line"
    else:
        texts, where = read_stdin_lines(), "stdin: line"
        numbers = range(1, len(texts) + 1)
    if not texts:
        raise FinsentError("stdin: no texts to classify")
    for index, problem in (
        (first_blank(texts), "empty or only whitespace"),  # the pipeline's rule: no tweet to classify
        (first_lone_surrogate(texts), "a lone surrogate, not UTF-8 text"),
    ):
        if index is not None:
            raise FinsentError(f"{where} {numbers[index]}: {problem}")
    output_format = args.format or (
        "csv" if args.output and args.output.suffix.lower() == ".csv" else "jsonl"
    )

    predictor = load_predictor(
        settings.backend,
        settings.model_dir,
        settings.exported_dir,
        settings.batch_size,
        int8_weights=settings.int8_weights,
        runtime=settings.runtime,
    )
    show_progress = args.input_file is not None and len(texts) > PROGRESS_MIN_ROWS
    with tqdm(total=len(texts), unit="text", disable=not show_progress, file=sys.stderr) as progress:
        chunks = []
        for start in range(0, len(texts), CHUNK_TEXTS):
            chunks.append(predictor.predict_proba(texts[start : start + CHUNK_TEXTS]))
            progress.update(len(chunks[-1]))
    result = format_predictions(np.concatenate(chunks), output_format)
    if args.output is None:
        sys.stdout.write(result)
        return
    try:
        with atomic_file(args.output) as staging:
            staging.write_text(result, encoding="utf-8")
    except OSError as error:  # no permission, a parent that is a file
        raise FinsentError(f"{args.output}: cannot write it ({error.strerror})") from None


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
