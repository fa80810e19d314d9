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
import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from tqdm import tqdm

from finsent.atomic import atomic_file
from finsent.cli import run_cli
from finsent.config import BACKENDS, LABELS, PROBABILITY_COLUMNS
from finsent.errors import FinsentError
from finsent.inference.local_ray import local_ray, share_authentication
from finsent.inference.predict import positive_int
from finsent.inference.predictors import load_predictor, onnx_providers
from finsent.inference.settings import PredictorSettings, load_settings
from finsent.inference.texts import FORMATS, input_format, nothing_to_classify, read_rows, shown

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
    rows: int
    fingerprint: str
    """fsspec's ukey of the file (size, modification time, ...): another value, another file."""
    id_types: dict[str, pa.DataType]
    """The Arrow type of each id column, the same in every unit of the file."""


@dataclass(frozen=True)
class Unit:
    """Rows [start, stop) of one input file: the work of one actor call and one output file."""

    url: str
    start: int
    stop: int

    @property
    def name(self) -> str:
        """The output file's name: the input's name, a hash of its URL (two inputs may share a name),
        the rows, zero-padded so that the names sort in row order."""
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:8]
        return f"{self.url.rsplit('/', 1)[-1]}.{digest}.rows-{self.start:010d}-{self.stop:010d}.parquet"


# ---- Reading inputs ------------------------------------------------------------------------------


def list_input_files(inputs: list[str], output_url: str) -> list[str]:
    """The URL of every file that `inputs` (files, folders or globs; local paths or fsspec URLs) name,
    in order, each once: a folder's or a glob's files of known suffix, not hidden; none in the output
    folder."""
    found: dict[str, None] = {}
    for given in inputs:
        fs, path = file_system(given)
        given_url = fs.unstrip_protocol(path.rstrip("/"))
        if given_url == output_url or in_folder(given_url, output_url):
            where = "is" if given_url == output_url else "is in"
            raise FinsentError(f"{shown(given)}: {where} the output folder; the output cannot be the input")
        if any(magic in path for magic in "*?["):
            paths = [match for match in fs.glob(path) if fs.isfile(match)]
        elif fs.isdir(path):
            paths = [match for match in fs.find(path) if not hidden(match.removeprefix(path))]
        elif fs.isfile(path):
            if not input_format(path):
                raise FinsentError(
                    f"{shown(given)}: not a Parquet, CSV or JSONL file (suffixes: {', '.join(FORMATS)})"
                )
            paths = [path]
        else:
            raise FinsentError(f"{shown(given)}: not found")
        urls = [fs.unstrip_protocol(match) for match in sorted(paths) if input_format(match)]
        urls = [url for url in urls if not in_folder(url, output_url)]
        if not urls:
            raise FinsentError(
                f"{shown(given)}: no Parquet, CSV or JSONL file here (suffixes: {', '.join(FORMATS)})"
            )
        found.update(dict.fromkeys(urls))
    return list(found)


def in_folder(url: str, folder_url: str) -> bool:
    return url.startswith(f"{folder_url}/")


def hidden(relative_path: str) -> bool:
    """Whether a file, or a folder it is in, is named as hidden (.name) or as metadata (_SUCCESS), as
    Parquet data sets name what is not data."""
    return any(part.startswith((".", "_")) for part in relative_path.split("/"))


def file_system(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec's file system and path for a path or URL; a local path absolute, without `..`."""
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as error:  # the protocol's package: s3fs, gcsfs...
        raise FinsentError(f"{shown(url)}: {error}") from None
    return fs, os.path.abspath(path) if isinstance(fs, LocalFileSystem) else path


def scan_input(url: str, text_column: str, id_columns: list[str]) -> InputFile:
    """The file's rows, after checking every one (finsent.inference.texts), and the type of its ids."""
    rows, types = 0, {name: [] for name in id_columns}
    for batch in read_rows(url, text_column, id_columns):
        for name, values in batch.others.items():
            types[name].append(id_array(url, name, values).type)
        rows = batch.first + len(batch)
    fs, path = fsspec.core.url_to_fs(url)
    return InputFile(url, rows, fs.ukey(path), {name: common_type(url, name, types[name]) for name in types})


def id_array(url: str, column: str, values, id_type: pa.DataType | None = None) -> pa.Array:
    """An id column's values (a list, or a Parquet file's array) as an Arrow array, of `id_type` if given."""
    try:
        if isinstance(values, pa.Array):
            return values if id_type is None else values.cast(id_type)
        return pa.array(values, type=id_type)
    except (pa.ArrowException, OverflowError) as error:
        raise FinsentError(
            f"{shown(url)}: column '{column}': cannot be written to Parquet ({error})"
        ) from None


def common_type(url: str, column: str, types: list[pa.DataType]) -> pa.DataType:
    """The type that holds the values of each batch of an id column (null and int64 give int64, int64
    and double give double)."""
    try:
        schemas = [pa.schema([(column, found)]) for found in types]
        return pa.unify_schemas(schemas, promote_options="permissive").field(column).type
    except (pa.ArrowException, IndexError) as error:
        raise FinsentError(
            f"{shown(url)}: column '{column}': values of types that do not mix ({error})"
        ) from None


def read_unit(unit: Unit, text_column: str, id_types: dict[str, pa.DataType]) -> tuple[list[str], dict]:
    """The texts and ids (Arrow arrays) of rows [unit.start, unit.stop) of the unit's file."""
    texts, ids = [], {name: [] for name in id_types}
    for batch in read_rows(unit.url, text_column, list(id_types), unit.start):
        take = min(unit.stop - batch.first, len(batch))
        texts += batch.texts[:take]
        for name, id_type in id_types.items():
            ids[name].append(id_array(unit.url, name, batch.others[name][:take], id_type))
        if batch.first + take >= unit.stop:
            break
    if len(texts) != unit.stop - unit.start:
        raise FinsentError(f"{shown(unit.url)}: changed while being scored (rows {unit.start}-{unit.stop})")
    return texts, {name: pa.concat_arrays(arrays) for name, arrays in ids.items()}


def plan_units(files: list[InputFile], unit_rows: int) -> list[Unit]:
    return [
        Unit(file.url, start, min(start + unit_rows, file.rows))
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


def scored_table(unit: Unit, ids: dict[str, pa.Array], probabilities: np.ndarray, version: str) -> pa.Table:
    """The output of one unit: where each row came from, its ids, label, class probabilities, model."""
    count = unit.stop - unit.start
    return pa.table(
        {
            "input_file": pa.array([unit.url] * count).dictionary_encode(),
            "input_row": pa.array(np.arange(unit.start, unit.stop)),
            **ids,
            "label": pa.array(np.array(LABELS)[probabilities.argmax(axis=1)]),
            **dict(zip(PROBABILITY_COLUMNS, probabilities.T, strict=True)),
            "model_version": pa.array([version] * count).dictionary_encode(),
        }
    )


class UnitScorer:
    """A Ray actor: loads the model once, then reads, classifies and writes each unit it is handed."""

    def __init__(self, model: dict, version: str, output_url: str, text_column: str, id_types: dict):
        self.predictor = load_predictor(**model)
        self.version, self.output_url = version, output_url
        self.text_column, self.id_types = text_column, id_types
        """The Arrow type of each id column, by input file URL."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        import ray

        names, counts = [], []
        for url, start, stop in zip(batch["url"], batch["start"], batch["stop"], strict=True):
            unit = Unit(str(url), int(start), int(stop))
            texts, ids = read_unit(unit, self.text_column, self.id_types[unit.url])
            probabilities = self.predictor.predict_proba(texts)
            with whole_file(f"{self.output_url}/{unit.name}") as file:
                pq.write_table(scored_table(unit, ids, probabilities, self.version), file)
            names.append(unit.name)
            counts.append(len(texts))
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
    elif fs.isfile(path):
        raise FinsentError(
            f"{shown(output_url)}: a file, not a folder; give a folder to write the results in"
        )
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
    try:
        with whole_file(f"{output_url}/{MANIFEST}") as file:
            file.write((json.dumps({"job": job, "complete": complete}, indent=1) + "\n").encode())
    except OSError as error:  # a parent that is a file, no permission
        raise FinsentError(f"{shown(output_url)}: cannot write there ({error.strerror or error})") from None


# ---- The run -------------------------------------------------------------------------------------


def check_ray_installed() -> None:
    """Ray is an optional dependency: without it, one line says how to install it. Not imported here:
    a local Ray's authentication is set before Ray is imported (`joined_ray`)."""
    if importlib.util.find_spec("ray") is None:
        raise FinsentError(RAY_MISSING)


@contextmanager
def joined_ray(address: str | None) -> Iterator:
    """Ray, this process joined to the cluster at `address`, else to a Ray on this machine's cores that
    ends with this run (finsent.inference.local_ray), until the block ends."""
    if not address:
        share_authentication()
    try:
        import ray
        import ray.data
    except ImportError:
        raise FinsentError(RAY_MISSING) from None
    with nullcontext(address) if address else local_ray() as joined:
        ray.init(address=joined, logging_level=logging.WARNING)
        try:
            # The driver's own bar counts texts; Ray Data's would count units. Ray Data's log lines
            # are its plan, its log folder and that its bars are off; its failures reach the driver
            # as exceptions.
            ray.data.DataContext.get_current().enable_progress_bars = False
            logging.getLogger("ray.data").setLevel(logging.ERROR)
            yield ray
        finally:
            ray.shutdown()


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
    check_ray_installed()
    fs, path = file_system(output)
    output_url = fs.unstrip_protocol(path.rstrip("/"))
    urls = list_input_files(inputs, output_url)
    files = [scan_input(url, text_column, id_columns) for url in urls]
    units = plan_units(files, unit_rows)
    if not units:
        raise nothing_to_classify(urls)
    version = check_model(model)
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
        id_types = {file.url: file.id_types for file in files}
        scorer = {
            "model": model,
            "version": version,
            "output_url": output_url,
            "text_column": text_column,
            "id_types": id_types,
        }
        texts, workers_used, nodes = score_pending(pending, scorer, address, workers, cpus, gpus)
    written = written_units(output_url)
    missing = [unit.name for unit in units if unit.name not in written]
    if missing:
        raise FinsentError(f"{shown(output_url)}: {missing[0]} is missing after the run; run it again")
    write_manifest(output_url, job, complete=True)
    texts_before = sum(unit.stop - unit.start for unit in units) - texts
    return Summary(texts, texts_before, time.perf_counter() - started, workers_used, nodes)


def check_model(model: dict) -> str:
    """The model's version, which names the outputs; a missing or broken model stops here, in one line,
    before anything is written or Ray starts. Loaded on the CPU: this machine may have no GPU where the
    actors' nodes have one. Their ONNX Runtime is this one."""
    version = load_predictor(**{**model, "device": "cpu"}).version
    if model["backend"] != "pytorch":
        onnx_providers(model["device"])
    return version


def score_pending(
    pending: list[Unit], scorer: dict, address: str | None, workers: int | None, cpus: int, gpus: float
) -> tuple[int, int, int]:
    """Score `pending` on Ray, with a progress bar of texts; the texts scored, actors and nodes used."""
    with joined_ray(address) as ray:
        pool = min(pool_size(ray, workers, cpus, gpus), len(pending))
        texts, nodes = 0, set()
        total = sum(unit.stop - unit.start for unit in pending)
        with tqdm(total=total, unit="text", file=sys.stderr) as progress:
            for result in score_units(ray, pending, scorer, pool, cpus, gpus):
                progress.update(result["rows"])
                texts += result["rows"]
                nodes.add(result["node"])
        return texts, pool, len(nodes)


def argument_parser(settings: PredictorSettings) -> argparse.ArgumentParser:
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
    return parser


def main() -> None:
    settings = load_settings(PredictorSettings)
    parser = argument_parser(settings)
    args = parser.parse_args()
    reserved = {*SOURCE_COLUMNS, "label", *PROBABILITY_COLUMNS, "model_version"}
    clash = next((name for name in args.id_column if name in reserved), None)
    if clash:
        parser.error(f"argument --id-column: the output has a column '{clash}' of its own")
    model = {
        "backend": args.backend or ("pytorch" if args.gpus_per_worker else settings.backend),
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
