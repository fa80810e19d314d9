"""Shared fixtures: tiny random models built from configs, slices of the real data, a pipeline copy."""

import contextlib
import csv
import io
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from filelock import FileLock
from ruamel.yaml import YAML
from support import PROJECT, SOURCE_ENV
from support import finsent_command as finsent_command  # the test files import it from here too

from finsent.config import LABELS
from finsent.data import MIRROR_ENV, SOURCE_FILES, fingerprint, read_source_csv
from finsent.pretrained import packaged_model

TEST_DATA = PROJECT / "tests" / "data" / "twitter-financial-news-sentiment"
"""The first records of the data set's two files, committed (see its README): what the tests read."""
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def whole_data_set_folder() -> Path | None:
    """The folder holding the whole data set's two files: the one FINSENT_DATA_MIRROR names where it is
    set (set but empty: none, as for the download stage), else ../shared's copy beside the checkout."""
    given = os.environ.get(MIRROR_ENV)
    if given is None:
        folder = PROJECT.parent / "shared" / "data" / "twitter-financial-news-sentiment"
    else:
        folder = Path(given) if given else None
    holds_both = folder is not None and all((folder / name).is_file() for name in SOURCE_FILES.values())
    return folder if holds_both else None


WHOLE_DATA_SET = whole_data_set_folder()


@pytest.fixture(scope="session")
def whole_data_set() -> Path:
    """The whole data set's folder, for the tests about the data set itself; they are skipped without it
    (`make test` passes in a clone without one: the other tests read TEST_DATA)."""
    if WHOLE_DATA_SET is None:
        pytest.skip(f"needs the whole data set: set {MIRROR_ENV} to a folder holding its two CSV files")
    return WHOLE_DATA_SET


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "whole_data_set: reads the whole data set (the `whole_data_set` fixture marks it; `-m` selects them)",
    )


BUILT_ONCE = ("first_run", "exported_project")
"""The session fixtures that one worker builds for all (`built_once`)."""


def pytest_collection_modifyitems(items):
    """The order in which pytest-xdist hands out test files: the end-to-end tests (marked slow) first,
    so that the longest ones start at once, on both workers, instead of ending the run alone; then the
    rest. In each part, first the first file that uses a fixture of BUILT_ONCE, whose worker builds it
    while the other runs the files that need no such fixture; the other files that use it last, when
    it is there to read instead of awaited."""
    users = {name: [item.path for item in items if name in item.fixturenames] for name in BUILT_ONCE}
    first_users = {paths[0] for paths in users.values() if paths}
    all_users = {path for paths in users.values() for path in paths}

    def order(item) -> tuple[bool, int]:
        fixture_order = 0 if item.path in first_users else 2 if item.path in all_users else 1
        return item.get_closest_marker("slow") is None, fixture_order

    items.sort(key=order)
    for item in items:
        if "whole_data_set" in item.fixturenames:
            item.add_marker("whole_data_set")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Tests never reach a hub: any attempt fails at once instead of hanging."""
    for name, value in OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)


def tiny_checkpoint(folder: Path, architecture: str = "bert", layers: int = 2) -> Path:
    """A 2-layer (or `layers`), 32-wide encoder with random weights and the real MiniLM tokenizer, saved
    as a checkpoint.

    `architecture` is "bert", "deberta-v2" (the architecture of DeBERTa-v3 checkpoints) or "mpnet"
    (all-mpnet-base-v2's; its tokenizer gives no token_type_ids, and neither does this one then).
    """
    import torch
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertModel,
        DebertaV2Config,
        DebertaV2Model,
        MPNetConfig,
        MPNetModel,
    )

    input_names = {"mpnet": ["input_ids", "attention_mask"]}.get(architecture)
    extra = {"model_input_names": input_names} if input_names else {}
    tokenizer = AutoTokenizer.from_pretrained(packaged_model(MINILM), **extra)
    tokenizer.model_max_length = 128  # the tiny model's positions: a longer text is truncated, not a crash
    sizes = {
        "vocab_size": tokenizer.vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
    }
    torch.manual_seed(0)  # the same random weights in every test session
    if architecture == "bert":
        model = BertModel(BertConfig(**sizes))
    elif architecture == "mpnet":
        model = MPNetModel(MPNetConfig(**sizes | {"max_position_embeddings": 130}))
    else:
        model = DebertaV2Model(DebertaV2Config(pooler_hidden_size=32, **sizes))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_mpnet_dir(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny-mpnet"), "mpnet")


def first_records(source: Path, rows: int) -> bytes:
    """The bytes of a CSV file up to the end of its header and `rows` records (as TEST_DATA was made)."""
    content = source.read_bytes().decode("utf-8")
    reader = csv.reader(io.StringIO(content, newline=""))
    for _ in range(1 + rows):
        next(reader)  # StopIteration: the file has fewer rows
    return "".join(io.StringIO(content, newline="").readlines()[: reader.line_num]).encode("utf-8")


def slice_mirror(folder: Path, rows: dict[str, int]) -> Path:
    """The first records of each of TEST_DATA's files, byte for byte, as a mirror folder of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in SOURCE_FILES.items():
        (folder / name).write_bytes(first_records(TEST_DATA / name, rows[split]))
    return folder


@pytest.fixture(scope="session")
def small_mirror(tmp_path_factory) -> Path:
    return slice_mirror(tmp_path_factory.mktemp("mirror"), {"train": 600, "validation": 200})


def mirror_fingerprint(folder: Path) -> dict:
    return {
        split: fingerprint(read_source_csv(folder / name)).model_dump()
        for split, name in SOURCE_FILES.items()
    }


def edit_params(repo: Path, **changes) -> None:
    """Set dotted keys in repo/params.yaml, as `dvc exp run -S` would."""
    yaml = YAML()
    path = repo / "params.yaml"
    params = yaml.load(path)
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        section = params
        for parent in parents:
            section = section[parent]
        section[key] = value
    yaml.dump(params, path)


def run(args: list[str], cwd: Path, env: dict | None = None, check: bool = True):
    """Run a command as a user would, with this venv's tools first on PATH."""
    full_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    full_env.update(env or {})
    result = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def repro(repo: Path, *args: str, env: dict | None = None) -> set[str]:
    """Run `dvc repro` and return the stages it ran."""
    output = run(["dvc", "repro", *args], cwd=repo, env=env).stdout
    return set(re.findall(r"Running stage '(\w+)'", output))


def stage_script(name: str) -> list[str]:
    return [sys.executable, str(PROJECT / "stages" / name)]


def run_here(
    entry: Callable[[], None], argv: list[str], cwd: Path, stdin: bytes = b""
) -> subprocess.CompletedProcess:
    """A command's entry point called in this process as if run as `argv` in `cwd` with `stdin`: its
    exit status, stdout and stderr. For the runs that stop on bad input: the command's own code,
    without a Python start-up and its imports for each case; each command also runs as a real process
    in its tests. What it changes of the process (cwd, argv, stdin, run_cli's SIGTERM handler) is put
    back."""
    stdout, stderr = io.StringIO(), io.StringIO()
    saved = os.getcwd(), sys.argv, sys.stdin, signal.getsignal(signal.SIGTERM)
    try:
        os.chdir(cwd)
        sys.argv, sys.stdin = argv, io.TextIOWrapper(io.BytesIO(stdin))
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                entry()
                code = 0
            except SystemExit as exit_status:
                code = exit_status.code or 0
    finally:
        os.chdir(saved[0])
        sys.argv, sys.stdin = saved[1], saved[2]
        signal.signal(signal.SIGTERM, saved[3])
    return subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())


def stage_here(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python stages/<name> args` in `cwd`, run in this process (`run_here`)."""
    script = str(PROJECT / "stages" / name)
    return run_here(lambda: runpy.run_path(script, run_name="__main__"), [script, *args], cwd)


def project_copy(repo: Path, tiny_bert_dir: Path, tiny_mpnet_dir: Path, small_mirror: Path) -> Path:
    """A git + DVC copy of the project, set to train the tiny model on the small mirror for 2 epochs,
    distilling a tiny MPNet teacher trained for 1 (the path of the small model's option, which the
    default, mpnet without a teacher, leaves out), and to audit with the tiny model (2 folds, 1 epoch);
    nothing run yet."""
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=PROJECT).stdout.split()
    for name in files:
        if (PROJECT / name).is_file() and not name.startswith(
            ("metrics/", "plots/", "data/teacher/", "data/audit/", "dvc.lock")
        ):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT / name, repo / name)
    edit_params(
        repo,
        data__fingerprint=mirror_fingerprint(small_mirror),
        model__checkpoint=str(tiny_bert_dir),
        train__learning_rate=1e-3,
        train__epochs=2,
        train__batch_size=16,
        distill__enabled=True,
        teacher__checkpoint=str(tiny_mpnet_dir),
        teacher__train__epochs=1,
        teacher__train__batch_size=16,
        teacher__augment__copies=2,
        teacher__runs=1,  # one run's metrics; an ensemble has its own test (tests/test_pipeline.py)
        audit__checkpoint=str(tiny_bert_dir),
        audit__folds=2,
        audit__train__epochs=1,
        audit__train__batch_size=16,
        export__min_agreement__onnx_int8=0.01,  # a tiny model trained on 600 tweets quantizes badly
    )
    init_git(repo)
    commit_files(repo, {}, "copy of the project")
    return repo


@pytest.fixture
def pipeline_repo(tmp_path, tiny_bert_dir, tiny_mpnet_dir, small_mirror, monkeypatch) -> Path:
    """The project's copy (`project_copy`), nothing run yet; the download stage reads the small mirror."""
    monkeypatch.setenv(MIRROR_ENV, str(small_mirror))
    return project_copy(tmp_path / "repo", tiny_bert_dir, tiny_mpnet_dir, small_mirror)


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """The folder `name` that `build(folder)` makes, read-only to the tests, built once a test session:
    the first xdist worker to need it builds it in the folder that all workers' temporary folders
    share, the others wait for it. What a build names by path (a tiny checkpoint, a mirror) is that
    worker's, which lasts as long as the session."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # each worker's temporary folder is one of this folder's
    folder = shared / name
    with FileLock(shared / f"{name}.lock"):
        if not folder.exists():
            staging = shared / f"{name}.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            build(staging)
            staging.rename(folder)
    return folder


@dataclass(frozen=True)
class FirstRun:
    repo: Path
    stages_run: set[str]


@pytest.fixture(scope="session")
def first_run(tmp_path_factory, tiny_bert_dir, tiny_mpnet_dir, small_mirror) -> FirstRun:
    """The project's copy after one `dvc repro`, committed with its dvc.lock, metrics and the teacher's
    outputs: run once a test session (`built_once`), copied by `pipeline_run` for each test that starts
    from it."""

    def build(folder: Path) -> None:
        repo = project_copy(folder / "repo", tiny_bert_dir, tiny_mpnet_dir, small_mirror)
        # Offline as every test is (a session fixture runs before `_offline`): the saved tokenizer's
        # config records whether it was loaded offline, so a test that repeats this run in a clone sees
        # the same bytes only with the same setting.
        stages_run = repro(repo, env={MIRROR_ENV: str(small_mirror), **OFFLINE_ENV})
        commit_files(repo, {}, "first run: dvc.lock, metrics and the teacher's outputs")
        (folder / "stages-run.txt").write_text("\n".join(sorted(stages_run)))

    folder = built_once(tmp_path_factory, "first-run", build)
    return FirstRun(folder / "repo", set((folder / "stages-run.txt").read_text().split()))


@pytest.fixture
def pipeline_run(tmp_path, first_run, small_mirror, monkeypatch) -> Path:
    """A copy of `first_run`'s repository (its git history and DVC cache too), this test's own."""
    monkeypatch.setenv(MIRROR_ENV, str(small_mirror))
    repo = tmp_path / "repo"
    shutil.copytree(first_run.repo, repo, symlinks=True)
    return repo


def set_git_identity(repo: Path) -> None:
    """A committer for the repository's own config: git commits, and so does `dvc exp run`."""
    run(["git", "config", "user.name", "finsent tests"], cwd=repo)
    run(["git", "config", "user.email", "tests@finsent.invalid"], cwd=repo)


def init_git(folder: Path) -> None:
    """An empty git repository on branch main, with a committer."""
    folder.mkdir(parents=True, exist_ok=True)
    run(["git", "init", "-q", "-b", "main"], cwd=folder)
    set_git_identity(folder)


def git_dvc_repo(folder: Path) -> Path:
    """An empty git + DVC repository on branch main."""
    init_git(folder)
    run(["dvc", "init", "-q"], cwd=folder)
    return folder


def commit_files(repo: Path, files: dict[str, str], message: str) -> None:
    """Write each file (path relative to the repo: content) and commit everything."""
    for name, content in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(content, encoding="utf-8")
    run(["git", "add", "-A"], cwd=repo)
    run(["git", "commit", "-qm", message], cwd=repo)


def predictions_frame(actual: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
    """A predictions table (as plots/predictions.csv, without probabilities) from class ids."""
    return pd.DataFrame(
        {
            "id": [str(i) for i in range(len(actual))],
            "actual": np.array(LABELS)[actual],
            "predicted": np.array(LABELS)[predicted],
        }
    )


def noisy_pair(rows: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two systems on one split: right about 70% and 80% of the time, otherwise a random class."""
    rng = np.random.default_rng(seed)
    actual = rng.choice(3, size=rows, p=[0.15, 0.2, 0.65])
    systems = [np.where(rng.random(rows) < right, actual, rng.integers(0, 3, rows)) for right in (0.7, 0.8)]
    return predictions_frame(actual, systems[0]), predictions_frame(actual, systems[1])


TINY_TEMPERATURE = 2.0
"""The temperature `tiny_trained_model` saves: not 1, so that a predictor that ignored it would show."""


def tiny_trained_model(checkpoint: Path, out_dir: Path) -> Path:
    """A LoRA classifier on `checkpoint`, saved as the train stage saves one (with TINY_TEMPERATURE); no
    training: its trainable weights are moved off their initial values at random, so that adapter and
    head matter."""
    import torch
    from transformers import AutoTokenizer

    from finsent.config import LoraParams
    from finsent.modeling import load_base_model, save_classifier, with_lora
    from finsent.text import TextNormalization

    torch.manual_seed(0)
    model = with_lora(
        load_base_model(checkpoint),
        LoraParams(enabled=True, r=4, alpha=8, dropout=0.0, target_modules="auto"),
    )
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.5)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    save_classifier(
        model.eval(), tokenizer, TextNormalization(), TINY_TEMPERATURE, "tiny-bert", checkpoint, out_dir
    )
    return out_dir


BEHAVIOUR_CASES = PROJECT / "data" / "behaviour.yaml"


DOUBTFUL_VALIDATION_IDS = [0, 1, 2]
"""The validation rows that `build_exported_project`'s audit file doubts."""


def evaluate_stage(project: Path) -> None:
    """The evaluate stage, run in `project` as dvc.yaml runs it (on the project's behavioural test
    cases, and data/audit/validation.csv): plots/predictions.csv, export's reference."""
    run(
        [
            *stage_script("evaluate.py"),
            "models",
            "data/raw/validation.jsonl",
            "data/audit/validation.csv",
            str(BEHAVIOUR_CASES),
            "metrics/validation.json",
            "plots",
        ],
        cwd=project,
        env=SOURCE_ENV,
    )


@pytest.fixture(scope="session")
def exported_project(tmp_path_factory, tiny_bert_dir, small_mirror) -> Path:
    """A project folder after train (a tiny model) and the real evaluate and export stages, with small
    serve limits; read-only to the tests. Built once a test session (`built_once`)."""
    return built_once(
        tmp_path_factory,
        "exported-project",
        lambda folder: build_exported_project(folder, tiny_bert_dir, small_mirror),
    )


def build_exported_project(project: Path, tiny_bert_dir: Path, small_mirror: Path) -> Path:
    from finsent.audit_files import write_doubtful
    from finsent.data import to_jsonl

    project.mkdir()
    shutil.copy(PROJECT / "params.yaml", project / "params.yaml")
    # A random tiny model's int8 copy is far off (its weights are no trained model's): no int8 threshold.
    edit_params(project, export__min_agreement__onnx_int8=0.01, serve__max_texts=4, serve__max_text_chars=50)
    (project / "data" / "raw").mkdir(parents=True)
    for split in ("train", "validation"):
        frame = read_source_csv(small_mirror / SOURCE_FILES[split])
        (project / "data" / "raw" / f"{split}.jsonl").write_bytes(to_jsonl(frame))
    (project / "data" / "raw" / "dev.jsonl").write_bytes(to_jsonl(frame.iloc[:100]))
    (project / "data" / "audit").mkdir()
    doubtful = frame.iloc[DOUBTFUL_VALIDATION_IDS].assign(label="Bullish", suggested="Neutral", quality=0.1)
    write_doubtful(project / "data" / "audit" / "validation.csv", doubtful)
    tiny_trained_model(tiny_bert_dir, project / "models")
    evaluate_stage(project)
    run(
        [
            *stage_script("export.py"),
            "models",
            "plots/predictions.csv",
            "data/raw/validation.jsonl",
            "data/raw/dev.jsonl",
            "data/raw/train.jsonl",
            "exported",
            "metrics/export.json",
        ],
        cwd=project,
        env=SOURCE_ENV,
    )
    return project


def served_predictor(exported_dir: Path, backend: str, batch_size: int):
    """The predictor that the commands and the server load for an ONNX `backend` of `exported_dir`
    (their default runtime and int8 file on this machine)."""
    from finsent.inference.predictors import load_predictor

    return load_predictor(backend, Path("models"), exported_dir, batch_size)
