"""The one way into DVC, on a throw-away git + DVC repository whose stage ran with the real `dvc repro`:
what each tool reads through it, and every failure of DVC's as one line that names what was asked."""

import shutil
import sys
from pathlib import Path

import pytest
from conftest import SOURCE_ENV, commit_files, git_dvc_repo, run

from finsent import dvc_access
from finsent.cli import restore_hint
from finsent.errors import FinsentError

STAGE = """\
import json
import os
from pathlib import Path

from ruamel.yaml import YAML

from finsent.cli import run_cli
from finsent.errors import FinsentError


def main():
    if os.environ.get("FAIL"):
        raise FinsentError("the stage failed")
    params = Path("params.yaml").read_text()
    Path("models").mkdir(exist_ok=True)
    Path("models/weights.bin").write_text("weights of " + params)
    Path("vocab.txt").write_text("bearish bullish")
    Path("metrics/train").mkdir(parents=True, exist_ok=True)
    Path("metrics/train/params.yaml").write_text(params)
    # A dev score that each param moves, for the sweep summary to tell runs apart.
    train = YAML(typ="safe").load(params)["train"]
    f1 = 0.8 + train["seed"] / 1000 + train["epochs"] / 100 + train.get("warmup", 0)
    summary = {"dev": {"macro_f1": f1, "accuracy": 0.9}, "best_epoch": train["epochs"]}
    Path("metrics/train/metrics.json").write_text(json.dumps(summary))


run_cli(main)
"""
DVC_YAML = """\
stages:
  train:
    cmd: python stage.py
    deps: [stage.py]
    params: [train]
    outs:
      - models
      - vocab.txt
      - metrics/train/params.yaml:
          cache: false
    metrics:
      - metrics/train/metrics.json:
          cache: false
"""
# As `dvc exp run -S train.learning_rate=1e-4` writes it: YAML 1.2, where PyYAML reads a string.
PARAMS = "train:\n  seed: 42\n  epochs: 3\n  learning_rate: 1e-4\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A repository whose `train` stage ran and was committed on main; `models/` is in the DVC cache."""
    repo = git_dvc_repo(tmp_path_factory.mktemp("dvc-access") / "repo")
    commit_files(repo, {"stage.py": STAGE, "dvc.yaml": DVC_YAML, "params.yaml": PARAMS}, "stage")
    run(["dvc", "repro", "-q"], cwd=repo, env=SOURCE_ENV)
    commit_files(repo, {}, "trained")
    return repo


@pytest.fixture
def repo(trained, tmp_path, monkeypatch) -> Path:
    """This test's own copy of `trained` (its DVC cache too), the working folder."""
    copy = tmp_path / "repo"
    shutil.copytree(trained, copy, symlinks=True)
    monkeypatch.chdir(copy)
    return copy


def drop_cache(repo: Path) -> None:
    shutil.rmtree(repo / ".dvc" / "cache")


def test_files_at_a_revision_come_from_git_or_from_the_dvc_cache(repo, tmp_path):
    assert dvc_access.read_bytes("params.yaml", "main") == PARAMS.encode()  # in git
    assert dvc_access.read_bytes("models/weights.bin", "HEAD") == f"weights of {PARAMS}".encode()  # cache
    (repo / "models/weights.bin").write_text("changed in the workspace")
    out = dvc_access.download("models", "main", tmp_path / "got")
    assert [path.name for path in out.iterdir()] == ["weights.bin"]
    assert (out / "weights.bin").read_text() == f"weights of {PARAMS}"


def test_params_are_read_as_dvc_reads_them(repo):
    (repo / "metrics/train/params.yaml").unlink()  # read at the revision alone
    recorded = dvc_access.yaml_at("metrics/train/params.yaml", "main")
    assert recorded == {
        "train": {"seed": 42, "epochs": 3, "learning_rate": 1e-4}
    }  # a float, not the string "1e-4"
    assert dvc_access.yaml_at("metrics/other.yaml", "main", missing_ok=True) is None


@pytest.mark.parametrize(
    ("read", "message"),
    [
        (lambda: dvc_access.read_bytes("nope.csv", "main"), "main:nope.csv: no such file at revision main"),
        (
            lambda: dvc_access.read_bytes("models", "main"),
            "main:models: a folder at revision main, not a file",
        ),
        (lambda: dvc_access.read_bytes("", "main"), "main:: a folder at revision main, not a file"),
        (lambda: dvc_access.read_bytes("params.yaml", ""), ":params.yaml: no revision given (REV:PATH)"),
        (
            lambda: dvc_access.read_bytes("../outside", "main"),
            "main:../outside: no such file at revision main",
        ),
        (
            lambda: dvc_access.read_bytes("params.yaml", "nope"),
            "nope:params.yaml: unknown Git revision 'nope'",
        ),
        (
            lambda: dvc_access.yaml_at("metrics/other.yaml", "main"),
            "main:metrics/other.yaml: no such file at revision main",
        ),
        (
            lambda: dvc_access.yaml_at("metrics/train/params.yaml", "nope", missing_ok=True),
            "nope:metrics/train/params.yaml: unknown Git revision 'nope'",
        ),
        (lambda: dvc_access.params_diff("nope"), "dvc params diff nope --json: unknown Git revision 'nope'"),
        (
            lambda: dvc_access.experiments(["nope"], 1),
            "dvc exp show --no-fetch --num 1 --rev=nope --json: failed to show experiments - "
            "unknown Git revision 'nope'",
        ),
    ],
)
def test_a_failure_of_dvc_is_one_line_naming_what_was_asked(repo, read, message):
    with pytest.raises(FinsentError) as raised:
        read()
    assert str(raised.value) == message


def test_an_output_whose_data_is_in_no_storage_is_named_as_such(repo, tmp_path):
    drop_cache(repo)
    with pytest.raises(FinsentError) as raised:
        dvc_access.read_bytes("vocab.txt", "main")
    assert str(raised.value) == (
        "main:vocab.txt: an output of that revision whose data is neither in this DVC cache "
        "nor in a remote (`dvc pull`, or `dvc exp pull` for an experiment)"
    )
    # A folder output: its listing is in no storage either, and DVC's data layer says so.
    for path in ("models", "models/weights.bin"):
        with pytest.raises(FinsentError, match=rf"^main:{path}: failed to load directory \('models',\)$"):
            dvc_access.download(path, "main", tmp_path / "got")


def test_experiments_list_each_run_with_its_own_recorded_params(repo):
    run(
        ["dvc", "exp", "run", "-q", "-n", "lower", "-S", "train.learning_rate=1e-5"], cwd=repo, env=SOURCE_ENV
    )
    (commit,) = [entry for entry in dvc_access.experiments(["main"], 1) if entry["rev"] != "workspace"]
    (experiment,) = commit["experiments"]
    (run_rev,) = experiment["revs"]
    assert run_rev["name"] == "lower"
    assert dvc_access.yaml_at("metrics/train/params.yaml", run_rev["rev"]) == {
        "train": {"seed": 42, "epochs": 3, "learning_rate": 1e-5}
    }
    assert dvc_access.yaml_at("metrics/train/params.yaml", "lower")["train"]["learning_rate"] == 1e-5


def test_the_restore_hint_names_the_cache_git_or_neither_for_each_output(repo):
    (repo / "metrics/train/params.yaml").unlink()
    (repo / "vocab.txt").unlink()
    shutil.rmtree(repo / "models")
    assert restore_hint("train", repo) == (
        " (DVC removed this stage's outputs before running it: `dvc checkout train` restores the "
        "previous models, vocab.txt; `git checkout -- metrics/train/params.yaml` restores the committed "
        "metrics/train/params.yaml)"
    )
    drop_cache(repo)
    assert restore_hint("train", repo).endswith(
        "restores the committed metrics/train/params.yaml; the previous models, vocab.txt is in neither "
        "the DVC cache nor git)"
    )
    assert restore_hint("never-ran", repo) == ""


def test_a_stage_that_fails_under_dvc_repro_says_how_to_restore_what_dvc_removed(repo):
    # `dvc repro` holds the repository while the stage runs: the hint must be made all the same.
    result = run(["dvc", "repro", "--force"], cwd=repo, env={**SOURCE_ENV, "FAIL": "1"}, check=False)
    assert result.returncode != 0
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error == (
        "error: the stage failed (DVC removed this stage's outputs before running it: `dvc checkout "
        "train` restores the previous models, vocab.txt; `git checkout -- metrics/train/metrics.json "
        "metrics/train/params.yaml` restores the committed metrics/train/metrics.json, "
        "metrics/train/params.yaml)"
    )
    run(["dvc", "checkout", "train"], cwd=repo)
    assert (repo / "models/weights.bin").read_text() == f"weights of {PARAMS}"


def test_a_dvc_command_runs_as_the_dvc_this_python_imports(repo, monkeypatch):
    # No `dvc` on PATH: the same DVC as dvc.api, whatever the shell finds first.
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent.parent / "no-such-bin"))
    assert dvc_access.params_diff("main") == {}


def test_a_sweep_over_three_commits_groups_runs_by_what_their_records_hold(repo):
    """The sweep summary over real `dvc exp run`s: a key added to params.yaml between two commits sets
    the older runs apart, shown `absent`, with no list of keys to keep up to date."""
    run(["dvc", "exp", "run", "-q", "-n", "old-s1", "-S", "train.seed=1"], cwd=repo, env=SOURCE_ENV)
    commit_files(repo, {"params.yaml": PARAMS + "  warmup: 0.1\n"}, "a new key")
    run(["dvc", "repro", "-q"], cwd=repo, env=SOURCE_ENV)
    commit_files(repo, {}, "run with the new key, seed 42")
    run(["dvc", "exp", "run", "-q", "-n", "new-e4", "-S", "train.epochs=4"], cwd=repo, env=SOURCE_ENV)
    run(["git", "checkout", "--", "."], cwd=repo)  # the workspace's params.yaml: the defaults

    summary = ["python", "-m", "finsent.experiments.sweep_summary", "--rev", "main", "-n", "3"]
    assert run(summary, cwd=repo, env=SOURCE_ENV).stdout.splitlines()[2:] == [
        "| `train.epochs=4` | 1 | 42 | 0.982 | 0.982 to 0.982 | 0.900 | 4 |",
        "| `none (params.yaml)` | 1 | 42 | 0.972 | 0.972 to 0.972 | 0.900 | 3 |",
        "| `train.warmup=absent` | 2 | 1, 42 | 0.852 | 0.831 to 0.872 | 0.900 | 3, 3 |",
    ]
    nothing = run([*summary[:3], "--rev", "nope"], cwd=repo, env=SOURCE_ENV, check=False)
    assert (nothing.returncode, nothing.stderr) == (
        1,
        "error: dvc exp show --no-fetch --num 1 --rev=nope --json: failed to show experiments - "
        "unknown Git revision 'nope'\n",
    )
