import json
import subprocess

from conftest import PROJECT, SOURCE_ENV, commit_files, git_dvc_repo, run
from ruamel.yaml import YAML

from finsent.experiments.sweep_summary import (
    TRAIN_METRICS,
    Run,
    describe_change,
    runs_of,
    summary_table,
    training_params,
)

DEFAULTS = training_params(YAML(typ="safe").load((PROJECT / "params.yaml").read_text()))


def recorded(**changes) -> dict:
    """The project's params as a run records them (metrics/train/params.yaml), with `changes`."""
    params = YAML(typ="safe").load((PROJECT / "params.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        params[section][key] = value
    return params


def test_a_run_differs_by_its_changed_params_and_never_by_its_seed():
    assert describe_change(training_params(recorded(train__seed=7)), DEFAULTS) == "none (params.yaml)"
    changed = training_params(recorded(train__epochs=5, lora__r=8))
    assert describe_change(changed, DEFAULTS) == "lora.r=8 train.epochs=5"


def test_records_of_other_times_are_compared_by_what_they_hold():
    old = recorded()
    del old["tokenize"]["url_replacement"], old["train"]["focal_gamma"]
    old["train"]["retired_knob"] = 3  # a key params.yaml no longer has
    assert describe_change(training_params(old), DEFAULTS) == (
        "tokenize.url_replacement=absent train.focal_gamma=absent train.retired_knob=3"
    )
    del old["lora"]  # a section the run lacks altogether: one word, not one a key
    assert describe_change(training_params(old), DEFAULTS).startswith("lora=absent tokenize.url_")
    # A key that params.yaml gains later reads absent in every older record, with no list to keep:
    # these runs stand apart from those that ran with the key.
    newer = training_params(recorded()) | {"train.new_knob": 0.5}
    assert describe_change(training_params(recorded()), newer) == "train.new_knob=absent"


def test_the_teacher_counts_only_for_a_run_that_distils():
    plain = recorded(distill__enabled=False, teacher__label_batch_size=7)
    del plain["teacher"]  # a run that does not distil records no teacher
    assert describe_change(training_params(plain), DEFAULTS) == "distill.enabled=False"
    del plain["distill"]  # recorded before distillation existed: it did not distil either
    assert describe_change(training_params(plain), DEFAULTS) == "distill=absent"
    distilled = recorded(teacher__label_batch_size=7)  # the default distils
    assert describe_change(training_params(distilled), DEFAULTS) == "teacher.label_batch_size=7"
    # Recorded when word dropout was the only augmentation, its rate named word_dropout.
    augment = distilled["teacher"]["augment"]
    augment["word_dropout"] = augment.pop("rate")
    del augment["method"]
    assert describe_change(training_params(distilled), DEFAULTS) == (
        "teacher.augment.method=absent teacher.augment.rate=absent teacher.augment.word_dropout=0.15 "
        "teacher.label_batch_size=7"
    )
    del distilled["teacher"]  # recorded before runs recorded their teacher
    assert describe_change(training_params(distilled), DEFAULTS) == "teacher=absent"


def test_summary_has_a_row_a_change_best_mean_first():
    runs = [
        Run("a", "none (params.yaml)", 42, 0.82, 0.86, 3),
        Run("b", "none (params.yaml)", 1, 0.84, 0.88, 3),
        Run("c", "train.epochs=5", 42, 0.835, 0.87, 4),
    ]
    rows = summary_table(runs).splitlines()[2:]
    assert rows == [
        "| `train.epochs=5` | 1 | 42 | 0.835 | 0.835 to 0.835 | 0.870 | 4 |",
        "| `none (params.yaml)` | 2 | 42, 1 | 0.830 | 0.820 to 0.840 | 0.870 | 3, 3 |",
    ]


def test_only_finished_runs_count_not_one_still_running(monkeypatch):
    monkeypatch.chdir(PROJECT)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    summary = json.loads((PROJECT / TRAIN_METRICS).read_text())
    finished = {"rev": head, "metrics": {TRAIN_METRICS: {"data": summary}}}
    # What `dvc exp show --json` gives for a queued experiment while it runs: metrics read from the
    # folder it runs in (here: partial ones), its rev the queue's copy of HEAD, which holds HEAD's record.
    partial = {**summary, "dev": {**summary["dev"], "macro_f1": 0.5}, "best_epoch": 1}
    running = {"rev": "workspace", "metrics": {TRAIN_METRICS: {"data": partial}}}
    shown = [
        {
            "rev": head,
            "data": finished,
            "experiments": [{"revs": [{"rev": head, "name": "still-running", "data": running}]}],
        }
    ]
    runs = runs_of(shown, DEFAULTS)
    assert [(run.name, run.dev_macro_f1) for run in runs] == [(head[:7], summary["dev"]["macro_f1"])]


RECORDING_STAGE = """\
import json
from pathlib import Path

from ruamel.yaml import YAML

params = YAML(typ="safe").load(Path("params.yaml").read_text())
train = params["train"]
Path("metrics/train").mkdir(parents=True, exist_ok=True)
Path("metrics/train/params.yaml").write_text(Path("params.yaml").read_text())
f1 = 0.8 + train["seed"] / 1000 + train["epochs"] / 100 + train.get("warmup", 0)
dev = {"macro_f1": f1, "accuracy": 0.9}
Path("metrics/train/metrics.json").write_text(json.dumps({"dev": dev, "best_epoch": train["epochs"]}))
"""
RECORDING_DVC_YAML = """\
stages:
  train:
    cmd: python stage.py
    deps: [stage.py]
    params: [train]
    outs:
      - metrics/train/params.yaml:
          cache: false
    metrics:
      - metrics/train/metrics.json:
          cache: false
"""


def test_a_sweep_over_two_commits_groups_runs_by_what_their_records_hold(tmp_path):
    """Real `dvc exp run`s: a key added to params.yaml between two commits sets the older runs apart,
    shown `absent`, with no list of keys to keep up to date."""
    repo = git_dvc_repo(tmp_path / "repo")
    files = {"stage.py": RECORDING_STAGE, "dvc.yaml": RECORDING_DVC_YAML}
    commit_files(repo, {**files, "params.yaml": "train:\n  seed: 42\n  epochs: 3\n"}, "params")
    run(["dvc", "repro", "-q"], cwd=repo)
    commit_files(repo, {}, "run, seed 42")
    run(["dvc", "exp", "run", "-q", "-n", "old-s1", "-S", "train.seed=1"], cwd=repo)
    commit_files(repo, {"params.yaml": "train:\n  seed: 42\n  epochs: 3\n  warmup: 0.1\n"}, "a new key")
    run(["dvc", "repro", "-q"], cwd=repo)
    commit_files(repo, {}, "run with the new key, seed 42")
    run(["dvc", "exp", "run", "-q", "-n", "new-e4", "-S", "train.epochs=4"], cwd=repo)
    run(["git", "checkout", "--", "."], cwd=repo)  # the workspace's params.yaml: the defaults

    summary = run(
        ["python", "-m", "finsent.experiments.sweep_summary", "--rev", "main", "-n", "3"],
        cwd=repo,
        env=SOURCE_ENV,
    )
    assert summary.stdout.splitlines()[2:] == [
        "| `train.epochs=4` | 1 | 42 | 0.982 | 0.982 to 0.982 | 0.900 | 4 |",
        "| `none (params.yaml)` | 1 | 42 | 0.972 | 0.972 to 0.972 | 0.900 | 3 |",
        "| `train.warmup=absent` | 2 | 1, 42 | 0.852 | 0.831 to 0.872 | 0.900 | 3, 3 |",
    ]
    nothing = run(
        ["python", "-m", "finsent.experiments.sweep_summary", "--rev", "nope"],
        cwd=repo,
        env=SOURCE_ENV,
        check=False,
    )
    assert (nothing.returncode, nothing.stderr) == (
        1,
        "error: dvc exp show --no-fetch --num 1 --rev=nope --json: failed to show experiments - "
        "unknown Git revision 'nope'\n",
    )
