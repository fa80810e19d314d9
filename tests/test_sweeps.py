import json
import subprocess

from conftest import PROJECT
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
