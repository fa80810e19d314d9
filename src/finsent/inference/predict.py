"""The `finsent-predict` command: classify texts from arguments, stdin lines, or a CSV, JSONL or Parquet
file."""

import argparse
import csv
import io
import json
import os
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
from finsent.inference.predictors import FP32_FILE, INT8_FILES, Predictor
from finsent.inference.settings import PredictorSettings, load_settings
from finsent.inference.texts import FORMATS, argument_texts, file_texts, stdin_texts

PROGRESS_MIN_ROWS = 500
"""Files with more rows than this show a progress bar on stderr."""

CHUNK_TEXTS = 512
"""Texts handed to the model at a time (it batches them itself): the progress bar's step."""


def writes_over_input(output: Path, input_file: str | None) -> bool:
    """Whether `output` is the input (the --input-file, else what stdin reads), through any link."""
    try:
        written = output.stat()
        read = os.stat(input_file) if input_file is not None else os.fstat(0)  # stdin
    except OSError:  # not there yet: nothing to overwrite; a URL
        return False
    return stat.S_ISREG(read.st_mode) and os.path.samestat(written, read)


def file_above(output: Path) -> Path | None:
    """The nearest of `output`'s parents that exists, where it is not a folder."""
    existing = next((parent for parent in output.parents if parent.exists()), None)
    return None if existing is None or existing.is_dir() else existing


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


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finsent-predict",
        description="Classify finance tweets as Bearish, Bullish or Neutral: texts given as arguments, "
        "else the rows of --input-file, else the lines of stdin. One result per text, in input order.",
        epilog="Defaults come from FINSENT_<SETTING>, else params.yaml's inference section, else the "
        "built-in default (finsent/inference/settings.py).",
    )
    parser.add_argument("texts", nargs="*", help="texts to classify")
    parser.add_argument(
        "-i",
        "--input-file",
        help=f"file with a text column, its format by suffix ({', '.join(FORMATS)}); a path, or a URL "
        "where finsent[scale] is installed",
    )
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
    return parser


def check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Stop with a usage error (exit status 2) on flags that cannot work together."""
    if args.texts and args.input_file:
        parser.error("give texts as arguments or --input-file, not both")
    if args.output is None:
        return
    if args.output.is_dir():
        parser.error(f"argument -o/--output: {args.output} is a folder; give a file to write")
    blocking = file_above(args.output)
    if blocking is not None:
        parser.error(
            f"argument -o/--output: {blocking} is a file, not a folder to write {args.output.name} in"
        )
    if not args.texts and writes_over_input(args.output, args.input_file):
        parser.error(f"argument -o/--output: {args.output} is the input file; give another file to write")


def texts_to_classify(args: argparse.Namespace) -> list[str]:
    """The arguments, else the --input-file's text column, else the lines of stdin; each one checked."""
    if args.texts:
        return argument_texts(args.texts)
    if args.input_file:
        return file_texts(args.input_file, args.text_column)
    return stdin_texts()


def probabilities_in_chunks(predictor: Predictor, texts: list[str], show_progress: bool) -> np.ndarray:
    """Each text's class probabilities, CHUNK_TEXTS texts at a time, with a progress bar if asked."""
    with tqdm(total=len(texts), unit="text", disable=not show_progress, file=sys.stderr) as progress:
        chunks = []
        for start in range(0, len(texts), CHUNK_TEXTS):
            chunks.append(predictor.predict_proba(texts[start : start + CHUNK_TEXTS]))
            progress.update(len(chunks[-1]))
    return np.concatenate(chunks)


def write_output(result: str, output: Path | None) -> None:
    """`result` to stdout, or into the file `output`, whole or not at all."""
    if output is None:
        sys.stdout.write(result)
        return
    try:
        with atomic_file(output) as staging:
            staging.write_text(result, encoding="utf-8")
    except OSError as error:  # no permission
        raise FinsentError(f"{output}: cannot write it ({error.strerror})") from None


def main() -> None:
    # Flags first, settings after (flags override them): `--help` and a bad flag need no settings.
    parser = argument_parser()
    args = parser.parse_args()
    settings = load_settings(
        PredictorSettings,
        backend=args.backend,
        model_dir=args.model_dir,
        exported_dir=args.exported_dir,
        batch_size=args.batch_size,
    )
    check_usage(parser, args)
    texts = texts_to_classify(args)
    output_format = args.format or (
        "csv" if args.output and args.output.suffix.lower() == ".csv" else "jsonl"
    )
    predictor = settings.load()
    show_progress = args.input_file is not None and len(texts) > PROGRESS_MIN_ROWS
    probabilities = probabilities_in_chunks(predictor, texts, show_progress)
    write_output(format_predictions(probabilities, output_format), args.output)


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
