"""The `finsent-predict` command: classify texts from arguments, stdin lines, or a CSV or JSONL file."""

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from finsent.atomic import atomic_file
from finsent.cli import run_cli
from finsent.config import BACKENDS, LABELS
from finsent.errors import FinsentError
from finsent.predictors import ONNX_FILES, load_predictor
from finsent.serving.settings import load_serve_settings
from finsent.text import first_blank

PROGRESS_MIN_ROWS = 500
"""Files with more rows than this show a progress bar on stderr."""

CHUNK_TEXTS = 512
"""Texts handed to the model at a time (it batches them itself): the progress bar's step."""


def read_texts_file(path: Path, column: str) -> list[str]:
    """The `column` of a CSV file, or of a JSONL file (one object a line), as strings."""
    try:
        content = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise FinsentError(f"{path}: file not found") from None
    except OSError as error:  # a folder, no permission
        raise FinsentError(f"{path}: cannot read it ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise FinsentError(f"{path}: not UTF-8 (byte {error.start})") from None
    try:
        if path.suffix.lower() == ".csv":
            # Every cell a string: "NA" or "null" are texts here, not missing values.
            frame = pd.read_csv(io.StringIO(content), dtype=str, keep_default_na=False)
        else:
            frame = pd.read_json(io.StringIO(content), lines=True, dtype=False)
    except pd.errors.EmptyDataError:
        raise FinsentError(f"{path}: empty file, nothing to classify") from None
    except (pd.errors.ParserError, ValueError) as error:
        kind = "CSV" if path.suffix.lower() == ".csv" else "JSONL"
        raise FinsentError(f"{path}: not a readable {kind} file ({str(error).splitlines()[0]})") from None
    if frame.empty:
        raise FinsentError(f"{path}: no rows, nothing to classify")
    if column not in frame.columns:
        raise FinsentError(
            f"{path}: missing column '{column}' (columns: {', '.join(map(str, frame.columns))})"
        )
    not_text = ~frame[column].map(lambda value: isinstance(value, str))
    if not_text.any():
        row = int(not_text.to_numpy().argmax())
        raise FinsentError(f"{path}: row {row + 1}: column '{column}' is not a string")
    return frame[column].tolist()


def read_stdin_lines() -> list[str]:
    try:
        return sys.stdin.buffer.read().decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise FinsentError(f"stdin: not UTF-8 (byte {error.start})") from None


def format_predictions(probabilities: np.ndarray, output_format: str) -> str:
    """One line per text, in order: its label and the probability of each class, as JSONL or CSV."""
    labels = np.array(LABELS)[probabilities.argmax(axis=1)]
    if output_format == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["label", *(f"p_{name}" for name in LABELS)])
        writer.writerows(
            [label, *(f"{p:.6f}" for p in row)] for label, row in zip(labels, probabilities, strict=True)
        )
        return out.getvalue()
    return "".join(
        json.dumps({"label": label, "probabilities": dict(zip(LABELS, row.round(6).tolist(), strict=True))})
        + "\n"
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
    settings = load_serve_settings()
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
        default=settings.backend,
        help=f"runtime and model (default: {settings.backend}): ONNX from --exported-dir "
        f"({', '.join(ONNX_FILES.values())}), PyTorch from --model-dir",
    )
    parser.add_argument("--model-dir", type=Path, default=settings.model_dir, help="train stage output")
    parser.add_argument(
        "--exported-dir", type=Path, default=settings.exported_dir, help="export stage output"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=settings.batch_size, help="texts a model run, at most"
    )
    args = parser.parse_args()

    if args.texts and args.input_file:
        parser.error("give texts as arguments or --input-file, not both")
    if args.output is not None and args.output.is_dir():
        parser.error(f"argument -o/--output: {args.output} is a folder; give a file to write")
    # Where a text came from, for an error: "argument 2", "<file>: row 2", "stdin: line 2".
    if args.texts:
        texts, where = args.texts, "argument"
    elif args.input_file:
        texts, where = read_texts_file(args.input_file, args.text_column), f"{args.input_file}: row"
    else:
        texts, where = read_stdin_lines(), "stdin: line"
    if not texts:
        raise FinsentError("stdin: no texts to classify")
    blank = first_blank(texts)
    if blank is not None:  # the pipeline's rule: such a text is no tweet to classify
        raise FinsentError(f"{where} {blank + 1}: empty or only whitespace")
    output_format = args.format or (
        "csv" if args.output and args.output.suffix.lower() == ".csv" else "jsonl"
    )

    predictor = load_predictor(args.backend, args.model_dir, args.exported_dir, args.batch_size)
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
