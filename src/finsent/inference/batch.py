"""The `finsent-score` command: classify archives of texts (Parquet, CSV or JSONL files) on Ray Data.

This process (the driver) lists the input files, checks each one whole (readable, its columns, every
text a non-blank string) and cuts it into units of fixed row ranges, each named after its file and
rows. A Ray Data pipeline hands the units not yet written to a pool of actors, each of which loads the
model once and, for each unit, reads its rows, classifies them and writes one Parquet file under the
unit's name, whole or not at all. A rerun of the same command skips the units already written; a unit
that Ray retries after its actor died is written under the same name again, so no row is written twice.
The output folder's manifest records the model and inputs its results come from: another run refuses
to mix in other results.
"""

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.json
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from tqdm import tqdm

from finsent.atomic import atomic_file
from finsent.cli import run_cli
from finsent.config import BACKENDS, LABELS, PROBABILITY_COLUMNS
from finsent.errors import FinsentError
from finsent.inference.predict import positive_int
from finsent.inference.predictors import load_predictor, onnx_providers
from finsent.inference.settings import PredictorSettings, load_settings
from finsent.text import first_blank

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
"""Input formats by file suffix."""

FORMAT_NAMES = {"parquet": "Parquet", "csv": "CSV", "jsonl": "JSONL"}

MANIFEST = "_finsent_score.json"
"""In the output folder: the run whose results it holds. Parquet readers skip names starting with _."""

DEFAULT_UNIT_ROWS = 10_000
"""Rows a unit (an output file), at most: the most work that a killed actor or an interruption loses."""

SOURCE_COLUMNS = ("input_file", "input_row")
"""Output columns naming each row's input file (URL) and its row there (from 0), beside its id columns."""

RAY_MISSING = (
    "finsent-score runs on Ray, which is not installed: pip install -e '.[scale]' (the project's extra)"
)


@dataclass(frozen=True)
class InputFile:
    url: str
    """fsspec URL: file:///... for a local file."""
    format: str
    rows: int
    fingerprint: str
    """fsspec's ukey of the file (size, modification time, ...): another value, another file."""


@dataclass(frozen=True)
class Unit:
    """Rows [start, stop) of one input file: the work of one actor call and one output file."""

    url: str
    format: str
    start: int
    stop: int

    @property
    def name(self) -> str:
        """The output file's name: the input's name, a hash of its URL (two inputs may share a name),
        the rows, zero-padded so that the names sort in row order."""
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:8]
        return f"{self.url.rsplit('/', 1)[-1]}.{digest}.rows-{self.start:010d}-{self.stop:010d}.parquet"


def shown(url: str) -> str:
    """A URL as messages name it: a local file by its path, relative to the working folder if under it."""
    if not url.startswith("file://"):
        return url
    path = url.removeprefix("file://")
    relative = os.path.relpath(path)
    return path if relative.startswith(os.pardir + os.sep) else relative


# ---- Reading inputs ------------------------------------------------------------------------------


def list_input_files(inputs: list[str], output_url: str) -> list[tuple[str, str]]:
    """(URL, format) of every file that `inputs` (files, folders or globs; local paths or fsspec URLs)
    name, in order, each once: a folder's or a glob's files of known suffix, not hidden, not in the
    output folder."""
    found: dict[str, str] = {}
    for given in inputs:
        fs, path = file_system(given)
        if any(magic in path for magic in "*?["):
            paths = [match for match in fs.glob(path) if fs.isfile(match)]
        elif fs.isdir(path):
            paths = [match for match in fs.find(path) if not hidden(match.removeprefix(path))]
        elif fs.isfile(path):
            if not input_format(path):
                raise FinsentError(
                    f"{given}: not a Parquet, CSV or JSONL file (suffixes: {', '.join(FORMATS)})"
                )
            paths = [path]
        else:
            raise FinsentError(f"{given}: no such file or folder")
        urls = [fs.unstrip_protocol(match) for match in sorted(paths) if input_format(match)]
        urls = [url for url in urls if not url.startswith(f"{output_url}/")]
        if not urls:
            raise FinsentError(
                f"{given}: no Parquet, CSV or JSONL file here (suffixes: {', '.join(FORMATS)})"
            )
        found.update((url, input_format(url)) for url in urls)
    return list(found.items())


def hidden(relative_path: str) -> bool:
    """Whether a file, or a folder it is in, is named as hidden (.name) or as metadata (_SUCCESS), as
    Parquet data sets name what is not data."""
    return any(part.startswith((".", "_")) for part in relative_path.split("/"))


def file_system(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec's file system and path for a path or URL; a local path absolute, without `..`."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs, os.path.abspath(path) if isinstance(fs, LocalFileSystem) else path


def input_format(url: str) -> str | None:
    return FORMATS.get(os.path.splitext(url)[1].lower())


@contextmanager
def reading(url: str, file_format: str) -> Iterator[None]:
    """Turn a failure to read `url` into one line naming it."""
    try:
        yield
    except FileNotFoundError:
        raise FinsentError(f"{shown(url)}: file not found") from None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
        raise FinsentError(
            f"{shown(url)}: not a readable {FORMAT_NAMES[file_format]} file ({reason})"
        ) from None
    except OSError as error:  # a folder, no permission, a remote store's refusal
        raise FinsentError(f"{shown(url)}: cannot read it ({error.strerror or error})") from None


def _open_stream(file: BinaryIO, file_format: str, columns: list[str] | None):
    """A reader of record batches of a CSV or JSONL file: its `columns` (None: all of them)."""
    if file_format == "csv":
        # Every cell a string, as finsent-predict reads a CSV: "NA" or "" are texts, not missing values.
        convert = pyarrow.csv.ConvertOptions(
            include_columns=columns,
            column_types=dict.fromkeys(columns or [], pa.string()),
            strings_can_be_null=False,
        )
        return pyarrow.csv.open_csv(file, convert_options=convert)
    return pyarrow.json.open_json(file)


def column_names(url: str, file_format: str) -> list[str]:
    with reading(url, file_format), fsspec.open(url, "rb") as file:
        if file_format == "parquet":
            return pq.ParquetFile(file).schema_arrow.names
        return _open_stream(file, file_format, None).schema.names


def record_batches(
    url: str, file_format: str, columns: list[str], start: int = 0
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(index of its first row, batch) for the batches of `columns` of a file, from the one holding row
    `start` on (a Parquet file is read from its row group; a CSV or JSONL one from its beginning)."""
    with reading(url, file_format), fsspec.open(url, "rb") as file:
        if file_format == "parquet":
            parquet = pq.ParquetFile(file)
            first_row, groups = 0, []
            for index in range(parquet.num_row_groups):
                group_rows = parquet.metadata.row_group(index).num_rows
                if first_row + group_rows > start or groups:
                    groups.append(index)
                else:
                    first_row += group_rows
            batches = parquet.iter_batches(row_groups=groups, columns=columns) if groups else []
        else:
            first_row, stream = 0, _open_stream(file, file_format, columns)
            batches = (batch.select(columns) for batch in stream)
        for batch in batches:
            yield first_row, batch
            first_row += batch.num_rows


def check_texts(url: str, column: str, first_row: int, texts: pa.Array) -> None:
    """Raise FinsentError naming the file and row of the first text that is no string or is blank."""
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        texts = pa.nulls(len(texts))  # numbers or nested values: not one of them is a text
    if texts.null_count:
        row = first_row + texts.is_null().to_numpy(zero_copy_only=False).argmax()
        raise FinsentError(f"{shown(url)}: row {row + 1}: column '{column}' is not a string")
    blank = first_blank(texts.to_pylist())
    if blank is not None:  # the pipeline's rule: such a text is no tweet to classify
        raise FinsentError(f"{shown(url)}: row {first_row + blank + 1}: empty or only whitespace")


def scan_input(url: str, file_format: str, text_column: str, id_columns: list[str]) -> InputFile:
    """The file's rows, after checking that it has the columns and a text on every row."""
    names = column_names(url, file_format)
    missing = [column for column in [text_column, *id_columns] if column not in names]
    if missing:
        raise FinsentError(f"{shown(url)}: missing column '{missing[0]}' (columns: {', '.join(names)})")
    rows = 0
    with reading(url, file_format):  # a Parquet string that is not UTF-8 fails once decoded
        for first_row, batch in record_batches(url, file_format, [text_column]):
            check_texts(url, text_column, first_row, batch.column(0))
            rows = first_row + batch.num_rows
    fs, path = fsspec.core.url_to_fs(url)
    return InputFile(url, file_format, rows, fs.ukey(path))


def read_rows(unit: Unit, columns: list[str]) -> pa.Table:
    """Rows [unit.start, unit.stop) of `columns` of the unit's file."""
    pieces = []
    for first_row, batch in record_batches(unit.url, unit.format, columns, unit.start):
        if first_row >= unit.stop:
            break
        lo, hi = max(unit.start - first_row, 0), min(unit.stop - first_row, batch.num_rows)
        if lo < hi:
            pieces.append(batch.slice(lo, hi - lo))
    table = pa.Table.from_batches(pieces) if pieces else None
    if table is None or table.num_rows != unit.stop - unit.start:
        raise FinsentError(f"{shown(unit.url)}: changed while being scored (rows {unit.start}-{unit.stop})")
    return table


def plan_units(files: list[InputFile], unit_rows: int) -> list[Unit]:
    return [
        Unit(file.url, file.format, start, min(start + unit_rows, file.rows))
        for file in files
        for start in range(0, file.rows, unit_rows)
    ]


# ---- Writing outputs -----------------------------------------------------------------------------


@contextmanager
def whole_file(url: str) -> Iterator[BinaryIO]:
    """A file to write that appears at `url` only once complete: on a local or mounted file system, a
    staging file renamed into place (finsent.atomic); elsewhere, an fsspec transaction, in which an
    object store publishes the object only when its upload is committed."""
    fs, path = fsspec.core.url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        with atomic_file(Path(path)) as staging, staging.open("wb") as file:
            yield file
    else:
        with fs.transaction, fs.open(path, "wb") as file:
            yield file


def scored_table(
    rows: pa.Table, unit: Unit, id_columns: list[str], probabilities: np.ndarray, version: str
) -> pa.Table:
    """The output of one unit: where each row came from, its ids, label, class probabilities, model."""
    count = rows.num_rows
    return pa.table(
        {
            "input_file": pa.array([unit.url] * count).dictionary_encode(),
            "input_row": pa.array(np.arange(unit.start, unit.stop)),
            **{name: rows[name] for name in id_columns},
            "label": pa.array(np.array(LABELS)[probabilities.argmax(axis=1)]),
            **dict(zip(PROBABILITY_COLUMNS, probabilities.T, strict=True)),
            "model_version": pa.array([version] * count).dictionary_encode(),
        }
    )


class UnitScorer:
    """A Ray actor: loads the model once, then reads, classifies and writes each unit it is handed."""

    def __init__(self, model: dict, version: str, output_url: str, text_column: str, id_columns):
        self.predictor = load_predictor(**model)
        self.version, self.output_url = version, output_url
        self.text_column, self.id_columns = text_column, list(id_columns)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        import ray

        names, counts = [], []
        for values in zip(*(batch[field] for field in ("url", "format", "start", "stop")), strict=True):
            unit = Unit(str(values[0]), str(values[1]), int(values[2]), int(values[3]))
            rows = read_rows(unit, [self.text_column, *self.id_columns])
            probabilities = self.predictor.predict_proba(rows[self.text_column].to_pylist())
            with whole_file(f"{self.output_url}/{unit.name}") as file:
                pq.write_table(scored_table(rows, unit, self.id_columns, probabilities, self.version), file)
            names.append(unit.name)
            counts.append(rows.num_rows)
        node = ray.get_runtime_context().get_node_id()
        return {"name": names, "rows": counts, "node": [node] * len(names)}


def prepare_output(output_url: str, job: dict) -> set[str]:
    """The names of the units already written in the output folder, after checking that it holds the
    results of this same job, or none, and recording the job there."""
    fs, path = fsspec.core.url_to_fs(output_url)
    manifest = f"{path}/{MANIFEST}"
    if fs.exists(manifest):
        try:
            recorded = json.loads(fs.cat_file(manifest))["job"]
        except (ValueError, KeyError, TypeError):
            raise FinsentError(f"{shown(output_url)}/{MANIFEST}: not a finsent-score manifest") from None
        difference = job_difference(recorded, job)
        done = written_units(output_url)
        if difference and done:
            raise FinsentError(
                f"{shown(output_url)}: holds the results of another run ({difference}); "
                "score into another output folder"
            )
        if not difference:
            return done
    elif fs.isdir(path) and fs.ls(path, detail=False):
        raise FinsentError(
            f"{shown(output_url)}: not empty, and no finsent-score output ({MANIFEST} is missing); "
            "give a new or empty folder"
        )
    write_manifest(output_url, job, complete=False)  # a new folder, or one that no unit was written to
    return set()


def job_difference(recorded: dict, job: dict) -> str | None:
    """What differs between the job an output folder holds and this one, in words; None if nothing."""
    for key, value in job.items():
        if key == "inputs" and recorded.get(key) != value:
            before = recorded.get(key) or {}
            url = next(url for url in [*value, *before] if before.get(url) != value.get(url))
            state = "is new" if url not in before else "is not given" if url not in value else "has changed"
            return f"input {shown(url)} {state}"
        if recorded.get(key) != value:
            return f"{key} {recorded.get(key)!r} there, {value!r} here"
    return None


def write_manifest(output_url: str, job: dict, complete: bool) -> None:
    with whole_file(f"{output_url}/{MANIFEST}") as file:
        file.write((json.dumps({"job": job, "complete": complete}, indent=1) + "\n").encode())


# ---- The run -------------------------------------------------------------------------------------


def import_ray():
    """Ray, an optional dependency: without it, one line says how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise FinsentError(RAY_MISSING) from None
    return ray


def start_ray(ray, address: str | None) -> None:
    """Join the Ray cluster at `address`, or start a local Ray on every core."""
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # not each run's plan and log folder
    # The driver's own bar counts texts; Ray Data's would count units, and warns when turned off.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def pool_size(ray, workers: int | None, cpus: int, gpus: float) -> int:
    """`workers`, else as many actors as the cluster's CPUs (and GPUs, with `gpus`) hold."""
    if workers:
        return workers
    resources = ray.cluster_resources()
    fit = int(resources.get("CPU", 0) // cpus)
    if gpus:
        fit = min(fit, int(resources.get("GPU", 0) // gpus))
    if fit < 1:
        wanted = f"{cpus} CPU" + (f" and {gpus} GPU" if gpus else "")
        raise FinsentError(f"the Ray cluster has no room for a worker of {wanted} (it has {resources})")
    return fit


def score_units(
    ray, pending: list[Unit], scorer: dict, workers: int, cpus: int, gpus: float
) -> Iterator[dict]:
    """Each unit's result ({name, rows, node}) as an actor finishes it."""
    # One block a unit: each is handed to an actor on its own.
    dataset = ray.data.from_items([asdict(unit) for unit in pending], override_num_blocks=len(pending))
    scored = dataset.map_batches(
        UnitScorer,
        fn_constructor_kwargs=scorer,
        batch_size=1,
        # Two units an actor: the next one waits beside the one being scored, and no more are held
        # back from an actor that is free.
        compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=2),
        num_cpus=cpus,
        num_gpus=gpus or None,
    )
    return scored.iter_rows()


def written_units(output_url: str) -> set[str]:
    fs, path = fsspec.core.url_to_fs(output_url)
    fs.invalidate_cache(path)  # an object store's listing may be cached from before the run
    return {name.rsplit("/", 1)[-1] for name in fs.ls(path, detail=False) if name.endswith(".parquet")}


@dataclass(frozen=True)
class Summary:
    texts: int
    texts_before: int
    """Texts of the units that an earlier run had written."""
    seconds: float
    workers: int
    nodes: int


def score_archive(
    inputs: list[str],
    output: str,
    text_column: str,
    id_columns: list[str],
    model: dict,
    unit_rows: int,
    address: str | None,
    workers: int | None,
    cpus: int,
    gpus: float,
) -> Summary:
    """Score the rows of `inputs` not yet scored into the `output` folder; `model`: load_predictor's
    arguments."""
    ray = import_ray()
    fs, path = file_system(output)
    output_url = fs.unstrip_protocol(path.rstrip("/"))
    files = [
        scan_input(url, file_format, text_column, id_columns)
        for url, file_format in list_input_files(inputs, output_url)
    ]
    units = plan_units(files, unit_rows)
    if not units:
        raise FinsentError("no rows to classify: every input file is empty")
    # A missing or broken model stops here, in one line, before Ray starts; on the CPU: this machine
    # may have no GPU where the actors' nodes have one. Its version names the model of the outputs.
    version = load_predictor(**{**model, "device": "cpu"}).version
    job = {
        "model_version": version,
        "backend": model["backend"],
        "text_column": text_column,
        "id_columns": id_columns,
        "unit_rows": unit_rows,
        "inputs": {file.url: file.fingerprint for file in files},
    }
    done = prepare_output(output_url, job)
    pending = [unit for unit in units if unit.name not in done]
    started = time.perf_counter()
    texts, workers_used, nodes = 0, 0, 0
    if pending:
        if model["backend"] != "pytorch":  # the actors' onnxruntime is this one
            onnx_providers(model["device"])
        scorer = {
            "model": model,
            "version": job["model_version"],
            "output_url": output_url,
            "text_column": text_column,
            "id_columns": id_columns,
        }
        texts, workers_used, nodes = score_pending(ray, pending, scorer, address, workers, cpus, gpus)
    written = written_units(output_url)
    missing = [unit.name for unit in units if unit.name not in written]
    if missing:
        raise FinsentError(f"{shown(output_url)}: {missing[0]} is missing after the run; run it again")
    write_manifest(output_url, job, complete=True)
    texts_before = sum(unit.stop - unit.start for unit in units) - texts
    return Summary(texts, texts_before, time.perf_counter() - started, workers_used, nodes)


def score_pending(
    ray, pending: list[Unit], scorer: dict, address: str | None, workers: int | None, cpus: int, gpus: float
) -> tuple[int, int, int]:
    """Score `pending` on Ray, with a progress bar of texts; the texts scored, actors and nodes used."""
    start_ray(ray, address)
    try:
        pool = min(pool_size(ray, workers, cpus, gpus), len(pending))
        texts, nodes = 0, set()
        total = sum(unit.stop - unit.start for unit in pending)
        with tqdm(total=total, unit="text", file=sys.stderr) as progress:
            for result in score_units(ray, pending, scorer, pool, cpus, gpus):
                progress.update(result["rows"])
                texts += result["rows"]
                nodes.add(result["node"])
        return texts, pool, len(nodes)
    finally:
        ray.shutdown()


def main() -> None:
    settings = load_settings(PredictorSettings)
    parser = argparse.ArgumentParser(
        prog="finsent-score", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "inputs", nargs="+", help="Parquet, CSV or JSONL files, folders or globs; paths or URLs"
    )
    parser.add_argument(
        "-o", "--output", required=True, help="output folder: a path (shared by the nodes) or URL"
    )
    parser.add_argument("-c", "--text-column", default="text", help="column of the texts (default: text)")
    parser.add_argument(
        "--id-column", action="append", default=[], help="column copied to the output (repeatable)"
    )
    parser.add_argument(
        "-b",
        "--backend",
        choices=BACKENDS,
        help=f"runtime and model (default: pytorch with --gpus-per-worker, else {settings.backend}); "
        "the ONNX ones on a GPU need onnxruntime-gpu",
    )
    parser.add_argument("--model-dir", type=Path, default=settings.model_dir, help="train stage output")
    parser.add_argument(
        "--exported-dir", type=Path, default=settings.exported_dir, help="export stage output"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=settings.batch_size, help="texts a model run, at most"
    )
    parser.add_argument(
        "--unit-rows",
        type=positive_int,
        default=DEFAULT_UNIT_ROWS,
        help=f"rows an output file, at most: the most an interruption loses (default: {DEFAULT_UNIT_ROWS})",
    )
    parser.add_argument(
        "--address", help="Ray cluster to run on, as `ray start` printed it (default: a local Ray)"
    )
    parser.add_argument(
        "--workers", type=positive_int, help="actors, each with the model (default: as many as fit)"
    )
    parser.add_argument("--cpus-per-worker", type=positive_int, default=1, help="CPUs (threads) an actor")
    parser.add_argument(
        "--gpus-per-worker", type=float, default=0, help="GPUs an actor: the model runs on CUDA"
    )
    args = parser.parse_args()
    backend = args.backend or ("pytorch" if args.gpus_per_worker else settings.backend)
    reserved = {*SOURCE_COLUMNS, "label", *PROBABILITY_COLUMNS, "model_version"}
    clash = next((name for name in args.id_column if name in reserved), None)
    if clash:
        parser.error(f"argument --id-column: the output has a column '{clash}' of its own")
    model = {
        "backend": backend,
        "model_dir": args.model_dir.resolve(),  # resolved here: actors may run in another folder
        "exported_dir": args.exported_dir.resolve(),
        "batch_size": args.batch_size,
        "threads": args.cpus_per_worker,
        "device": "cuda" if args.gpus_per_worker else "cpu",
        "int8_weights": settings.int8_weights,
        "runtime": settings.runtime,
    }
    try:
        summary = score_archive(
            args.inputs,
            args.output,
            args.text_column,
            args.id_column,
            model,
            args.unit_rows,
            args.address,
            args.workers,
            args.cpus_per_worker,
            args.gpus_per_worker,
        )
    except KeyboardInterrupt:
        raise FinsentError(
            f"interrupted: the files in {args.output} are whole; the same command scores the rest"
        ) from None
    rate = summary.texts / summary.seconds if summary.seconds else 0
    before = f" ({summary.texts_before:,} scored before)" if summary.texts_before else ""
    print(
        f"{summary.texts:,} texts scored{before} in {summary.seconds:.1f} s, {rate:.1f} texts/s "
        f"(workers: {summary.workers}, nodes: {summary.nodes}): {args.output}"
    )


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
