"""finsent-score on a real Ray: a cluster of two one-CPU nodes on this machine (Ray's own cluster_utils,
as Ray tests itself), a tiny exported model, real files of each format, real kills and interrupts."""

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import OFFLINE_ENV, SOURCE_ENV, TEST_DATA, finsent_command, served_predictor, tiny_trained_model

from finsent.config import LABELS, PROBABILITY_COLUMNS, ExportParams
from finsent.errors import FinsentError
from finsent.inference.batch import MANIFEST, RAY_MISSING, SOURCE_COLUMNS, main
from finsent.inference.predictors import TorchPredictor, onnx_file
from finsent.inference.texts import FORMATS

UNIT_ROWS = 250
BIG_ROWS = 20_000
"""Rows of big.parquet: enough units that an actor can be killed, or the command interrupted, midway."""


@pytest.fixture(scope="module")
def ray_env():
    """What every Ray process of this module runs with: on 127.0.0.1 only (Ray's setting for a machine
    without clusters, which its cluster_utils still joins nodes under), with this module's own token,
    no usage report, and the package from this checkout in each worker."""
    env = {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
        **SOURCE_ENV,
        **OFFLINE_ENV,
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)  # before ray is imported: it reads some of these once
        yield


@pytest.fixture(scope="module")
def cluster_address(ray_env) -> str:
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "object_store_memory": 100 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        cluster.add_node(**node)
        assert cluster.address.startswith("127.0.0.1:")
        yield cluster.address
    finally:
        cluster.shutdown()


def tweets() -> pd.DataFrame:
    """The tests' slice of the data set, both files (1,400 tweets), each with an id."""
    frame = pd.concat(
        pd.read_csv(TEST_DATA / name, dtype={"text": str}, keep_default_na=False)
        for name in ("sent_train.csv", "sent_valid.csv")
    )
    return pd.DataFrame({"id": [f"tweet-{i}" for i in range(len(frame))], "text": frame["text"].tolist()})


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert_dir) -> Path:
    """A folder with a tiny model (models/, exported/) and the tweets cut into three files, one of each
    format, one of them in a subfolder."""
    from finsent.export import write_onnx_models

    project = tmp_path_factory.mktemp("bulk")
    tiny_trained_model(tiny_bert_dir, project / "models")
    (project / "exported").mkdir()
    frame = tweets()
    write_onnx_models(
        TorchPredictor.from_dir(project / "models", 32),
        project / "exported",
        frame["text"].tolist()[:64],
        # min_agreement: the export stage's gate, which write_onnx_models does not apply.
        ExportParams(
            batch_size=32,
            smoothing_alpha=None,
            calibration_texts=64,
            keep_fp32=[],
            min_agreement={"onnx_fp32": 0.01, "onnx_int8": 0.01},
        ),
    )
    (project / "in" / "more").mkdir(parents=True)
    frame.iloc[:600].to_csv(project / "in" / "a.csv", index=False)
    pq.write_table(
        pa.Table.from_pandas(frame.iloc[600:1000], preserve_index=False),
        project / "in" / "b.parquet",
        row_group_size=200,
    )
    frame.iloc[1000:].to_json(project / "in" / "more" / "c.jsonl", orient="records", lines=True)
    big = pd.concat([frame] * (BIG_ROWS // len(frame) + 1)).iloc[:BIG_ROWS]
    big["id"] = [f"big-{i}" for i in range(BIG_ROWS)]
    big.to_parquet(project / "big.parquet", row_group_size=1000)
    return project


def score_command(*args: str) -> list[str]:
    return [*finsent_command("inference.batch"), *args]


def start_scoring(project: Path, *args: str, **popen) -> subprocess.Popen:
    """The command as a user runs it in a terminal, in the environment `ray_env` sets. SIGINT is set
    back to its default in the command: a test run started in the background by a shell without job
    control (`make test &`, a CI script) inherits it ignored, and Python then never raises
    KeyboardInterrupt."""
    return subprocess.Popen(
        score_command(*args),
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **popen,
    )


def score_in_process(project: Path, monkeypatch, *args: str) -> None:
    """finsent-score's main() in this process: for runs that fail, or find nothing to do, before Ray."""
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "argv", ["finsent-score", *args])
    main()


def unit_files(folder: Path) -> dict[str, int]:
    """The output files and the modification time of each."""
    return {path.name: path.stat().st_mtime_ns for path in folder.glob("*.parquet")}


def rows_in_name(name: str) -> tuple[int, int]:
    start, stop = re.search(r"rows-(\d+)-(\d+)\.parquet$", name).groups()
    return int(start), int(stop)


def map_workers() -> list[psutil.Process]:
    """This session's Ray Data actors: its clusters are its children, or its commands'."""
    return [
        process
        for process in psutil.Process().children(recursive=True)
        if process.cmdline()[:1] and process.cmdline()[0].startswith("ray::MapWorker")
    ]


UNIT_DEADLINE_S = 300
"""A bound, not a speed: the actors start and load the model while another test file may hold both cores."""


def wait_for_a_new_unit(folder: Path, command: subprocess.Popen, before: int = 0) -> None:
    """Wait until `command` has written more than `before` units in `folder`."""
    deadline = time.monotonic() + UNIT_DEADLINE_S
    while len(list(folder.glob("*.parquet"))) <= before:
        assert command.poll() is None, command.communicate()
        assert time.monotonic() < deadline, f"no unit written in {UNIT_DEADLINE_S} s"
        time.sleep(0.05)


@dataclass(frozen=True)
class Runs:
    """One command run twice into one folder: interrupted by Ctrl-C, then run to the end."""

    args: list[str]
    interrupted_stderr: str
    interrupted_exit: int
    after_interruption: dict[str, int]
    """The unit files and their modification times after the interruption."""
    stdout: str
    killed: int
    """The pid of the actor killed midway through the second run."""


@pytest.fixture(scope="module")
def runs(project, ray_env, cluster_address) -> Runs:
    """Every input (given as a glob, files and a folder) scored on the two-node cluster: interrupted
    by SIGINT to the command's process group (Ctrl-C in a terminal) once the first unit is written,
    then run again with one of its two actors killed once it has written another unit.

    Both runs classify one text a model run (--batch-size 1, which the output does not depend on),
    the first on one actor: the tiny model's runs last long enough that the interrupt and the kill
    land midway whatever else the machine runs."""
    args = ["in/*.csv", "in/b.parquet", "in/more", "big.parquet", "-o", "out", "--id-column", "id"]
    args += ["--unit-rows", str(UNIT_ROWS), "--address", cluster_address]
    first = start_scoring(project, *args, "--batch-size", "1", "--workers", "1", start_new_session=True)
    wait_for_a_new_unit(project / "out", first)
    os.killpg(first.pid, signal.SIGINT)
    _, interrupted_stderr = first.communicate(timeout=UNIT_DEADLINE_S)
    after_interruption = unit_files(project / "out")
    assert len(after_interruption) < ALL_ROWS / UNIT_ROWS, ("not interrupted", interrupted_stderr)

    second = start_scoring(project, *args, "--batch-size", "1")
    wait_for_a_new_unit(project / "out", second, before=len(after_interruption))
    victim = map_workers()[0]
    victim.kill()
    stdout, stderr = second.communicate(timeout=2 * UNIT_DEADLINE_S)
    assert second.returncode == 0, stderr
    return Runs(args, interrupted_stderr, first.returncode, after_interruption, stdout, victim.pid)


ALL_ROWS = 1_400 + BIG_ROWS


@pytest.mark.slow
def test_ctrl_c_leaves_only_whole_files(project, runs):
    assert runs.interrupted_exit == 1
    assert "Traceback" not in runs.interrupted_stderr
    assert runs.interrupted_stderr.splitlines()[-1] == (
        "error: interrupted: the files in out are whole; the same command scores the rest"
    )
    assert 0 < len(runs.after_interruption) < ALL_ROWS // UNIT_ROWS
    for name in runs.after_interruption:  # still there, as the interruption left them: whole
        start, stop = rows_in_name(name)
        assert pd.read_parquet(project / "out" / name)["input_row"].tolist() == list(range(start, stop))


@pytest.mark.slow
def test_the_rerun_scores_only_the_rest_on_both_nodes(project, runs):
    before = sum(stop - start for start, stop in map(rows_in_name, runs.after_interruption))
    # Ray's own line on the killed worker may come first.
    assert re.fullmatch(
        rf"{ALL_ROWS - before:,} texts scored \({before:,} scored before\) in [\d.]+ s, [\d.]+ texts/s "
        r"\(workers: 2, nodes: 2\): out",
        runs.stdout.splitlines()[-1],
    )
    now = unit_files(project / "out")
    assert {name: now[name] for name in runs.after_interruption} == runs.after_interruption
    assert not list((project / "out").glob(".*"))  # no staging file left


@pytest.mark.slow
def test_the_actor_killed_midway_was_replaced(runs):
    assert not psutil.pid_exists(runs.killed)
    assert "A worker died or was killed" in runs.stdout  # Ray restarted it and retried its units


@pytest.mark.slow
def test_every_row_once_with_the_int8_models_probabilities(project, runs):
    out = pd.read_parquet(project / "out")
    assert list(out.columns) == [*SOURCE_COLUMNS, "id", "label", *PROBABILITY_COLUMNS, "model_version"]
    expected_ids = [*tweets()["id"], *(f"big-{i}" for i in range(BIG_ROWS))]
    assert sorted(out["id"]) == sorted(expected_ids)  # each once
    assert set(out["model_version"]) == {served_predictor(project / "exported", "onnx_int8", 32).version}
    assert '"complete": true' in (project / "out" / MANIFEST).read_text()
    # Each file holds its unit's rows, scored exactly as the predictor scores those texts.
    predictor = served_predictor(project / "exported", "onnx_int8", 32)
    texts = tweets().set_index("id")["text"]
    small_units = sorted(path for path in (project / "out").glob("*.parquet") if "big" not in path.name)
    assert len(small_units) == 3 + 2 + 2  # 600, 400 and 400 rows
    for path in small_units:
        unit = pd.read_parquet(path)
        start, stop = rows_in_name(path.name)
        assert unit["input_row"].tolist() == list(range(start, stop))
        expected = predictor.predict_proba(texts[unit["id"]].tolist())
        np.testing.assert_allclose(unit[list(PROBABILITY_COLUMNS)].to_numpy(), expected, atol=1e-6)
        assert unit["label"].tolist() == [LABELS[i] for i in expected.argmax(axis=1)]


@pytest.mark.slow
def test_rerun_of_a_finished_folder_scores_nothing_and_touches_nothing(
    project, ray_env, runs, monkeypatch, capsys
):
    before = unit_files(project / "out")
    score_in_process(project, monkeypatch, *runs.args)
    assert re.fullmatch(
        rf"0 texts scored \({ALL_ROWS:,} scored before\) in [\d.]+ s.*\n", capsys.readouterr().out
    )
    assert unit_files(project / "out") == before


LOCAL_RAY_END_S = 30
"""A bound on how long a local Ray outlives the command killed outright: its agents, orphaned by a raylet
killed with the command, wait a minute for the head they report to; Ray's own shutdown takes seconds."""


def still_running(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of `processes` that run (a zombie has ended: only its exit status waits to be read)."""
    running = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                running.append(process)
        except psutil.NoSuchProcess:
            pass
    return running


def running_after(processes: list[psutil.Process], seconds: float) -> list[str]:
    """The names of those of `processes` still running after waiting up to `seconds` for them to end."""
    deadline = time.monotonic() + seconds
    while still_running(processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [process.cmdline()[:1] for process in still_running(processes)]


@pytest.mark.slow
def test_a_local_ray_ends_with_the_command_even_killed_outright(project, tmp_path):
    """The command on a Ray of its own (no --address), as a user runs it (no Ray settings), killed with
    SIGKILL once it has written a unit: every process of that Ray ends soon after; the same command
    again, on a new local Ray, scores the rest, and no process of it outlives it."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("RAY_")}
    env.update(RAY_USAGE_STATS_ENABLED="0", **SOURCE_ENV, **OFFLINE_ENV)
    args = ["in/a.csv", "-o", str(tmp_path / "out"), "--id-column", "id", "--unit-rows", "100"]
    first = start_scoring(project, *args, "--batch-size", "1", "--workers", "1", env=env)
    wait_for_a_new_unit(tmp_path / "out", first)
    descendants = psutil.Process(first.pid).children(recursive=True)
    assert any(process.name() == "raylet" for process in descendants)
    first.kill()
    first.communicate()
    assert running_after(descendants, LOCAL_RAY_END_S) == []

    second = start_scoring(project, *args, env=env)
    descendants = []
    while second.poll() is None:  # the processes it starts, as they come
        try:
            descendants += psutil.Process(second.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.5)
    stdout, stderr = second.communicate()
    assert second.returncode == 0, stderr
    assert re.fullmatch(
        r"[\d,]+ texts scored \([\d,]+ scored before\) in .*: .*out\n", stdout.splitlines()[-1] + "\n"
    )
    assert running_after(descendants, LOCAL_RAY_END_S) == []
    scored = pd.read_parquet(tmp_path / "out")
    assert sorted(scored["id"]) == sorted(tweets()["id"][:600])


BAD_INPUTS = [  # (files: name and content, arguments, message); each bad file alone: tests/test_texts.py
    (
        {"ids.jsonl": b'{"id": 1, "text": "ok"}\n{"id": "b", "text": "ok"}\n'},
        ["ids.jsonl", "--id-column", "id"],
        "ids.jsonl: line 2, column 'id': a string, where line 1 has a number",
    ),
    (
        {"ids.jsonl": b'{"id": 1, "text": "ok"}\n{"id": 99999999999999999999, "text": "ok"}\n'},
        ["ids.jsonl", "--id-column", "id"],
        "ids.jsonl: column 'id': cannot be written to Parquet (",
    ),
    (
        {"a.csv": b"text\n", "b.jsonl": b"\n"},
        ["a.csv", "b.jsonl"],
        "no rows to classify in any of the 2 input files",
    ),
    ({"empty/.keep": b""}, ["empty"], "empty: no Parquet, CSV or JSONL file here (suffixes: {suffixes})"),
    (
        {"in/a.csv": b"text\nok\n"},
        ["in", "-o", "in"],
        "in: is the output folder; the output cannot be the input",
    ),
    (
        {"in/a.csv": b"text\nok\n"},
        ["in/a.csv", "-o", "in"],
        "in/a.csv: is in the output folder; the output cannot be the input",
    ),
    (
        {"in/a.csv": b"text\nok\n"},
        ["in", "-o", "in/a.csv"],
        "in/a.csv: a file, not a folder; give a folder to write the results in",
    ),
    (
        {"in/a.csv": b"text\nok\n"},
        ["in", "-o", "in/a.csv/out"],
        "in/a.csv/out: cannot write there (Not a directory)",
    ),
]


@pytest.mark.parametrize(("files", "arguments", "message"), BAD_INPUTS)
def test_bad_input_is_refused_in_one_line_before_anything_is_written(
    project, tmp_path, monkeypatch, files, arguments, message
):
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    before = {path: path.read_bytes() if path.is_file() else None for path in tmp_path.rglob("*")}
    if "-o" not in arguments:
        arguments = [*arguments, "-o", "out"]
    arguments += ["--model-dir", str(project / "models"), "--exported-dir", str(project / "exported")]
    with pytest.raises(FinsentError) as error:
        score_in_process(tmp_path, monkeypatch, *arguments)
    expected = message.format(suffixes=", ".join(FORMATS))
    if expected.endswith("("):
        assert str(error.value).startswith(expected) and str(error.value).endswith(")")
    else:
        assert str(error.value) == expected
    assert "\n" not in str(error.value)
    assert {path: path.read_bytes() if path.is_file() else None for path in tmp_path.rglob("*")} == before


def test_a_missing_id_column_is_named(project, tmp_path, monkeypatch):
    with pytest.raises(FinsentError, match=r"b\.parquet: missing column 'tweet_id' \(columns: id, text\)$"):
        score_in_process(project, monkeypatch, "in/b.parquet", "--id-column", "tweet_id", "-o", "unused")
    assert not (project / "unused").exists()


@pytest.mark.slow
def test_an_output_folder_of_another_model_or_of_something_else_is_refused(
    project, ray_env, runs, tmp_path, monkeypatch
):
    other_model = tmp_path / "exported"
    shutil.copytree(project / "exported", other_model)
    with (other_model / "text_normalization.json").open("a") as file:
        file.write("\n")  # the same model to load, other bytes: another version
    before = unit_files(project / "out")
    with pytest.raises(FinsentError) as error:
        score_in_process(project, monkeypatch, *runs.args, "--exported-dir", str(other_model))
    assert str(error.value) == (
        f"out: holds the results of another run (model_version "
        f"'{served_predictor(project / 'exported', 'onnx_int8', 32).version}' there, "
        f"'{served_predictor(other_model, 'onnx_int8', 32).version}' here); score into another output folder"
    )
    assert unit_files(project / "out") == before

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not finsent-score's")
    with pytest.raises(FinsentError) as error:
        score_in_process(project, monkeypatch, "in/a.csv", "-o", str(tmp_path / "mine"))
    assert str(error.value) == (
        f"{tmp_path / 'mine'}: not empty, and no finsent-score output ({MANIFEST} is missing); "
        "give a new or empty folder"
    )
    assert [path.name for path in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_a_missing_model_is_one_line_and_writes_nothing(project, ray_env, tmp_path, monkeypatch):
    """The model is loaded first (its version names the outputs): without one, nothing is written."""
    for attempt in ("nowhere", "nowhere-either"):
        with pytest.raises(FinsentError) as error:
            score_in_process(
                project, monkeypatch, "in/a.csv", "-o", str(tmp_path / "out"), "--exported-dir", attempt
            )
        assert str(error.value).startswith(
            f"{onnx_file('onnx_int8', project / attempt)}: no exported model here"
        )
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(
    "CUDAExecutionProvider" in onnxruntime.get_available_providers(), reason="onnxruntime-gpu installed"
)
def test_an_onnx_backend_on_gpus_without_onnxruntimes_cuda_build_is_one_line_before_ray_starts(
    project, ray_env, tmp_path, monkeypatch
):
    with pytest.raises(FinsentError) as error:
        arguments = ["in/a.csv", "-o", str(tmp_path / "out"), "--backend", "onnx_fp32"]
        score_in_process(project, monkeypatch, *arguments, "--gpus-per-worker", "1")
    assert str(error.value) == (
        "the ONNX backends on a GPU need ONNX Runtime's CUDA provider, which this onnxruntime lacks: "
        f"install onnxruntime-gpu=={onnxruntime.__version__} in place of onnxruntime"
    )
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_an_id_column_named_as_an_output_column_is_a_usage_error(project, ray_env, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_status:
        score_in_process(project, monkeypatch, "in/a.csv", "-o", "unused", "--id-column", "label")
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.endswith(
        "error: argument --id-column: the output has a column 'label' of its own\n"
    )


def test_without_ray_the_command_says_how_to_install_it(project, tmp_path):
    """One line and exit status 1, from the console command as installed (ray made unimportable)."""
    without_ray = "import sys; sys.modules['ray'] = None; from finsent.inference.batch import cli; cli()"
    result = subprocess.run(
        [sys.executable, "-c", without_ray, "in/a.csv", "-o", str(tmp_path / "out")],
        cwd=project,
        env={**os.environ, **SOURCE_ENV},
        capture_output=True,
        text=True,
    )
    assert (result.returncode, result.stderr) == (1, f"error: {RAY_MISSING}\n")
    assert not (tmp_path / "out").exists()
