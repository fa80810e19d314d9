"""The real `dvc repro` and `dvc exp run`, offline, on a slice of the real data with a tiny model."""

import itertools
import json
import re
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import PROJECT, edit_params, repro, run
from ruamel.yaml import YAML
from scipy.special import softmax
from sklearn.metrics import f1_score
from transformers import AutoTokenizer

from finsent.audit_files import audit_code_sha256, read_doubtful, write_doubtful
from finsent.config import LABELS
from finsent.data import MIRROR_ENV, read_jsonl
from finsent.distillation import CODE_KEY, LOGIT_COLUMNS, MASK, teacher_code_sha256
from finsent.experiments.results import teacher_code_note
from finsent.inference.predictors import TorchPredictor
from finsent.metrics import headline_metrics

pytestmark = pytest.mark.slow
STAGES = ("download", "teacher", "audit", "tokenize", "train", "evaluate", "export")


def read_teacher_metrics(repo) -> dict:
    return json.loads((repo / "metrics/teacher.json").read_text())


def metrics(repo) -> dict:
    return {
        "dev": json.loads((repo / "metrics/train/metrics.json").read_text())["dev"],
        "validation": json.loads((repo / "metrics/validation.json").read_text()),
    }


def one_label_change(labels: np.ndarray, predicted: np.ndarray) -> float:
    """The most that macro-F1 moves when one text's predicted class changes: the tolerance of a score
    recomputed another way (a reloaded model, another batch size), where a CPU's rounding may tip one
    near tie to the other class."""
    base = f1_score(labels, predicted, labels=[0, 1, 2], average="macro")
    moved = 0.0
    for index, other in itertools.product(range(len(predicted)), range(3)):
        changed = predicted.copy()
        changed[index] = other
        moved = max(moved, abs(f1_score(labels, changed, labels=[0, 1, 2], average="macro") - base))
    return moved


def test_pipeline_reproduces_and_reruns_only_what_changed(first_run, pipeline_run):
    assert first_run.stages_run == set(STAGES)
    repo = pipeline_run
    first = metrics(repo)
    assert set(first["validation"]) >= {"accuracy", "macro_f1", "weighted_f1", "log_loss", "per_class"}
    assert set(first["validation"]["per_class"]) == {"Bearish", "Bullish", "Neutral"}
    predictions = (repo / "plots/predictions.csv").read_text().splitlines()
    assert predictions[0] == "id,actual,predicted,p_Bearish,p_Bullish,p_Neutral"
    assert len(predictions) == 1 + 200
    assert {p.name for p in (repo / "models").iterdir()} >= {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "base",
    }

    # The teacher's logits: one row a train and dev row, two augmented copies of train; the student's
    # training set is train's rows, each with its teacher logits, then one copy (distill params).
    train_rows = read_jsonl(repo / "data/raw/train.jsonl")
    teacher = {name: pd.read_csv(repo / "data/teacher" / f"{name}.csv") for name in ("train", "augmented")}
    assert teacher["train"]["id"].tolist() == train_rows["id"].tolist()
    assert teacher["augmented"]["copy"].value_counts().to_dict() == {0: len(train_rows), 1: len(train_rows)}
    teacher_metrics = json.loads((repo / "metrics/teacher.json").read_text())
    # Outcomes only: the speed is in the stage's log.
    assert set(teacher_metrics) == {"dev", "validation", "best_epoch", "train", CODE_KEY}
    assert teacher_metrics[CODE_KEY] == teacher_code_sha256(repo)  # the code it ran, which is this tree's
    assert set(teacher_metrics["train"]) == {"loss", "trainable_parameters"}
    tokenized = pq.read_table(repo / "data/tokenized/train.parquet").to_pandas()
    assert len(tokenized) == 2 * len(train_rows)
    assert (tokenized["label"][len(train_rows) :] == -100).all()
    np.testing.assert_allclose(
        np.stack(tokenized["teacher_logits"][: len(train_rows)]),
        teacher["train"][[f"logit_{name}" for name in ("Bearish", "Bullish", "Neutral")]],
        atol=1e-4,
    )

    # The saved model reproduces the dev score that chose it.
    dev = read_jsonl(repo / "data/raw/dev.jsonl")
    probabilities = TorchPredictor.from_dir(repo / "models", batch_size=64).predict_proba(
        dev["text"].tolist()
    )
    reloaded = headline_metrics(dev["label"].to_numpy(), probabilities)["macro_f1"]
    tolerance = one_label_change(dev["label"].to_numpy(), probabilities.argmax(axis=1))
    assert abs(reloaded - first["dev"]["macro_f1"]) <= tolerance + 1e-12

    assert repro(repo) == set()
    assert "up to date" in run(["dvc", "status"], cwd=repo).stdout

    edit_params(repo, evaluate__batch_size=7)
    reference = (repo / "plots/predictions.csv").read_bytes()
    rerun = repro(repo)
    # Export reruns exactly when its reference, evaluate's probabilities, moved in a printed digit: on
    # some CPUs another batch size rounds differently. Nothing upstream of evaluate reruns.
    moved = (repo / "plots/predictions.csv").read_bytes() != reference
    assert rerun == ({"evaluate", "export"} if moved else {"evaluate"})
    predicted = pd.read_csv(repo / "plots/predictions.csv")
    tolerance = one_label_change(
        *(predicted[column].map(LABELS.index).to_numpy() for column in ("actual", "predicted"))
    )
    assert abs(metrics(repo)["validation"]["macro_f1"] - first["validation"]["macro_f1"]) <= tolerance + 1e-12

    edit_params(repo, distill__alpha=0.8)
    assert repro(repo) == {"train", "evaluate", "export"}
    edit_params(repo, lora__r=2)
    assert repro(repo) == {"train", "evaluate", "export"}
    edit_params(repo, model__layers=1)  # of the tiny model's 2: the tokenizer is the same
    assert repro(repo) == {"train", "evaluate", "export"}
    assert json.loads((repo / "models/base/config.json").read_text())["num_hidden_layers"] == 1
    params_diff = run(["dvc", "params", "diff", "--md"], cwd=repo).stdout
    assert "lora.r" in params_diff
    assert "evaluate.batch_size" in params_diff
    assert "metrics/validation.json" in run(["dvc", "metrics", "diff", "--all"], cwd=repo).stdout

    # The same params again, from scratch: identical metrics on CPU.
    after_change = metrics(repo)
    repro(repo, "--force", "--single-item", "train")
    assert metrics(repo)["dev"] == after_change["dev"]

    run(["dvc", "plots", "show", "-o", "plots-html"], cwd=repo)
    html = (repo / "plots-html/index.html").read_text()
    assert "Confusion matrix (validation)" in html
    assert "Dev macro-F1 by epoch" in html


def test_exp_run_set_param_reaches_the_stage_as_a_float(pipeline_run):
    repo = pipeline_run
    committed = metrics(repo)["dev"]
    run(["dvc", "exp", "run", "-S", "train.learning_rate=1e-5"], cwd=repo)
    recorded = YAML(typ="safe").load((repo / "metrics/train/params.yaml").read_text())
    assert recorded["train"]["learning_rate"] == 1e-5
    assert type(recorded["train"]["learning_rate"]) is float

    shown = json.loads(run(["dvc", "exp", "show", "--json"], cwd=repo).stdout)
    experiments = [exp for rev in shown for exp in (rev.get("experiments") or [])]
    assert experiments, shown
    params = experiments[0]["revs"][0]["data"]["params"]["params.yaml"]["data"]
    assert params["train"]["learning_rate"] == 1e-5

    # The sweep summary groups it by its one change from the defaults (the committed params.yaml;
    # `dvc exp run` left the experiment's in the workspace), beside the commit's own run.
    run(["git", "checkout", "--", "params.yaml"], cwd=repo)
    table = run(["finsent-sweep-summary", "--rev", "HEAD"], cwd=repo).stdout.splitlines()
    dev = metrics(repo)["dev"]
    assert len(table) == 4
    assert sorted(row.split(" |")[:4] for row in table[2:]) == [
        ["| `none (params.yaml)`", " 1", " 42", f" {committed['macro_f1']:.3f}"],
        ["| `train.learning_rate=1e-05`", " 1", " 42", f" {dev['macro_f1']:.3f}"],
    ]
    failed = run(["finsent-sweep-summary", "--rev", "no-such-rev"], cwd=repo, check=False)
    assert failed.returncode == 1
    assert failed.stderr == (
        "error: dvc exp show --no-fetch --num 1 --rev=no-such-rev --json: failed to show experiments - "
        "unknown Git revision 'no-such-rev'\n"
    )

    # Scored again from the DVC cache on dev, the experiment gives the dev score training recorded;
    # an ensemble of a run with itself, the same.
    name = experiments[0]["revs"][0]["name"]
    scoring = ["finsent-score-runs", "--split", "dev", "--ensemble", name, name]
    rows = run(scoring, cwd=repo).stdout.splitlines()
    assert rows[2] == rows[3] == f"|  | {name} | 42 | {dev['macro_f1']:.4f} | {dev['accuracy']:.4f} |"
    assert rows[5] == f"|  | ensemble of 2 | | {dev['macro_f1']:.4f} | {dev['accuracy']:.4f} |"
    grouped = ["finsent-score-runs", "--split", "dev", f"a={name}", f"b={name},{name}"]
    rows = run(grouped, cwd=repo).stdout.splitlines()
    assert rows[2] == f"| a | {name} | 42 | {dev['macro_f1']:.4f} | {dev['accuracy']:.4f} |"
    assert rows[5].startswith(f"| b | mean (sd) of 2 | | {dev['macro_f1']:.4f} (0.0000) |")
    failed = run(["finsent-score-runs", "no-such-experiment"], cwd=repo, check=False)
    assert failed.returncode == 1
    assert failed.stderr == (
        "error: no-such-experiment:metrics/train/params.yaml: unknown Git revision 'no-such-experiment'\n"
    )


def test_bad_checkpoint_stops_repro_with_one_line(pipeline_repo):
    edit_params(pipeline_repo, model__checkpoint="nobody/no-such-model")
    result = run(["dvc", "repro"], cwd=pipeline_repo, check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert errors[0].startswith("error: model.checkpoint 'nobody/no-such-model': not a local folder")
    assert "Traceback" not in result.stderr
    assert not (pipeline_repo / "data/tokenized").exists()


def test_a_fresh_clone_does_not_train_the_teacher_again(first_run, tmp_path, small_mirror, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, str(small_mirror))
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(first_run.repo), str(clone)], cwd=tmp_path)
    assert repro(clone, "download") == {"download"}
    assert "up to date" in run(["dvc", "status", "teacher"], cwd=clone).stdout
    # The student trains again to the same bits, so evaluate, whose outputs are in git, has nothing to do.
    assert repro(clone) == {"tokenize", "train", "export"}
    # Distillation off: the teacher's outputs are not read, and training is the plain one.
    edit_params(clone, distill__enabled=False)
    assert repro(clone) == {"tokenize", "train", "evaluate", "export"}
    assert "teacher_logits" not in pq.read_table(clone / "data/tokenized/train.parquet").column_names


def test_the_teacher_reruns_only_on_purpose(pipeline_run):
    # Params of the served model, and an edit of a shared module the teacher runs: none schedules it.
    edit_params(pipeline_run, tokenize__max_length=96, model__revision="other", train__epochs=3)
    training = pipeline_run / "src/finsent/training.py"
    training.write_text(training.read_text() + "\n# an edit of the shared training code\n")
    status = run(["dvc", "status"], cwd=pipeline_run).stdout
    assert "tokenize:" in status
    assert "teacher" not in status
    dry = run(["dvc", "repro", "--dry"], cwd=pipeline_run).stdout
    assert "Running stage 'tokenize'" in dry
    assert "Running stage 'teacher'" not in dry
    # DVC quiet, the results say it: the code the teacher ran is not the tree's any more.
    changed = " (its code has changed since it was made: `make teacher` retrains it)"
    assert teacher_code_note(read_teacher_metrics(pipeline_run), pipeline_run) == changed
    # Its own params do, and `make teacher` retrains it on purpose whatever changed: with this code.
    assert "dvc repro --force --single-item teacher" in (PROJECT / "Makefile").read_text()
    assert repro(pipeline_run, "--force", "--single-item", "teacher") == {"teacher"}
    assert teacher_code_note(read_teacher_metrics(pipeline_run), pipeline_run) == ""
    edit_params(pipeline_run, teacher__augment__copies=1)
    assert "teacher:" in run(["dvc", "status"], cwd=pipeline_run).stdout


def test_the_audit_reruns_only_on_purpose_and_its_doubtful_rows_leave_training_when_asked(pipeline_run):
    repo = pipeline_run
    audit = json.loads((repo / "metrics/audit.json").read_text())
    assert audit[CODE_KEY] == audit_code_sha256(repo)
    train_rows = read_jsonl(repo / "data/raw/train.jsonl")
    assert audit["train"]["rows"] == len(train_rows)
    assert audit["train"]["doubtful"] == len(read_doubtful(repo / "data/audit/train.csv"))
    validation = json.loads((repo / "metrics/validation.json").read_text())
    doubtful_validation = len(read_doubtful(repo / "data/audit/validation.csv"))
    assert validation["trusted_labels"]["rows"] == 200 - doubtful_validation

    # A new audit (five rows doubted, as `dvc commit` records it): tokenize reruns to the same bytes,
    # without reading it, and nothing after it does.
    tokenized = (repo / "data/tokenized/train.parquet").read_bytes()
    doubted = train_rows.iloc[:5].assign(label="Bullish", suggested="Neutral", quality=0.1)
    write_doubtful(repo / "data/audit/train.csv", doubted)
    run(["dvc", "commit", "--force", "audit"], cwd=repo)
    assert repro(repo) == {"tokenize"}
    assert (repo / "data/tokenized/train.parquet").read_bytes() == tokenized

    # Asked to, it leaves them out of training, with their augmented copies (one a row).
    edit_params(repo, tokenize__drop_doubtful=True)
    assert repro(repo) == {"tokenize", "train", "evaluate", "export"}
    assert pq.read_table(repo / "data/tokenized/train.parquet").num_rows == 2 * (len(train_rows) - 5)

    # An edit of the shared training code does not schedule the audit; `make audit` reruns it.
    training = repo / "src/finsent/training.py"
    training.write_text(training.read_text() + "\n# an edit of the shared training code\n")
    assert "audit" not in run(["dvc", "status"], cwd=repo).stdout
    assert "dvc repro --force --single-item audit" in (PROJECT / "Makefile").read_text()


def test_an_ensemble_teacher_writes_the_log_of_its_runs_mean_probabilities(pipeline_run):
    edit_params(pipeline_run, teacher__runs=2, teacher__augment__method="mask", teacher__augment__rate=0.5)
    result = run(["dvc", "repro", "tokenize"], cwd=pipeline_run)
    assert set(re.findall(r"Running stage '(\w+)'", result.stdout)) == {"teacher", "tokenize"}
    # Lines in a log, not a progress bar: each run's training steps, and its labelling's batches up
    # to the last of each of the four sets it labels.
    assert re.search(r"^step \d+/\d+ \(epoch", result.stderr, re.MULTILINE)
    assert len(re.findall(r"^predicted batch (\d+)/\1$", result.stderr, re.MULTILINE)) == 2 * 4
    teacher_metrics = json.loads((pipeline_run / "metrics/teacher.json").read_text())
    assert set(teacher_metrics) == {"dev", "validation", "runs", CODE_KEY}
    assert set(teacher_metrics["runs"]) == {"seed_42", "seed_43"}  # teacher.train.seed, then the next
    for run_metrics in teacher_metrics["runs"].values():  # each run alone on dev and validation too
        assert {"dev", "validation", "best_epoch", "train"} <= set(run_metrics)
        assert 0 < run_metrics["validation"]["macro_f1"] <= 1
    dev_logits = pd.read_csv(pipeline_run / "data/teacher/dev.csv")[LOGIT_COLUMNS].to_numpy()
    np.testing.assert_allclose(np.exp(dev_logits).sum(axis=1), 1, atol=1e-3)  # log-probabilities
    dev = read_jsonl(pipeline_run / "data/raw/dev.jsonl")
    assert headline_metrics(dev["label"].to_numpy(), softmax(dev_logits, axis=1))[
        "macro_f1"
    ] == pytest.approx(teacher_metrics["dev"]["macro_f1"], abs=0.01)
    # Masked copies hold [MASK]; the student's rows carry its tokenizer's mask token there.
    augmented = pd.read_csv(pipeline_run / "data/teacher/augmented.csv", keep_default_na=False)
    assert augmented["text"].str.contains(MASK, regex=False).mean() > 0.5
    tokenized = pq.read_table(pipeline_run / "data/tokenized/train.parquet").to_pandas()
    mask_id = AutoTokenizer.from_pretrained(pipeline_run / "data/tokenized/tokenizer").mask_token_id
    copies = tokenized["input_ids"][len(read_jsonl(pipeline_run / "data/raw/train.jsonl")) :]
    assert copies.map(lambda ids: mask_id in ids).mean() > 0.5


def files_under(folder) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()
    }


def staging_left(repo) -> list[str]:
    """What a stage writing data/raw or data/tokenized left beside them (finsent.atomic's staging names)."""
    return [path.name for path in (repo / "data").iterdir() if path.name.startswith((".raw.", ".tokenized."))]


def test_a_failed_download_or_tokenize_keeps_their_outputs_with_an_empty_cache(pipeline_run, tmp_path):
    """The stages whose inputs users replace by hand (a mirror, a checkpoint) keep their outputs until the
    new ones are whole (persist: true in dvc.yaml; the stage renames its staging folder into place):
    a failed run leaves them byte for byte, though the DVC cache could not restore them."""
    repo = pipeline_run
    shutil.rmtree(repo / ".dvc" / "cache")
    before = {folder: files_under(repo / folder) for folder in ("data/raw", "data/tokenized")}
    broken = tmp_path / "broken-mirror"
    broken.mkdir()
    result = run(
        ["dvc", "repro", "--force", "download"], cwd=repo, env={MIRROR_ENV: str(broken)}, check=False
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {broken / 'sent_train.csv'}: file not found in the mirror folder"]
    edit_params(repo, model__checkpoint="nobody/no-such-model")
    result = run(["dvc", "repro", "tokenize"], cwd=repo, check=False)
    assert result.returncode != 0
    assert "error: model.checkpoint 'nobody/no-such-model': not a local folder" in result.stderr
    assert {folder: files_under(repo / folder) for folder in before} == before
    assert staging_left(repo) == []

    # A param of a persisted stage still reruns it, and its new outputs replace the old ones whole.
    run(["git", "checkout", "--", "params.yaml"], cwd=repo)
    edit_params(repo, tokenize__max_length=64)
    assert repro(repo, "tokenize") == {"tokenize"}
    assert files_under(repo / "data/tokenized")["train.parquet"] != before["data/tokenized"]["train.parquet"]
    edit_params(repo, data__seed=7)
    assert "download:" in run(["dvc", "status", "download"], cwd=repo).stdout
    assert repro(repo, "download") == {"download"}
    assert files_under(repo / "data/raw")["dev.jsonl"] != before["data/raw"]["dev.jsonl"]
    assert "up to date" in run(["dvc", "status", "download"], cwd=repo).stdout
    assert staging_left(repo) == []


def test_a_failed_stage_names_the_command_that_restores_its_outputs(pipeline_run):
    """A stage without persist: DVC removes its outputs before running it; its one line says how to get
    them back (the DVC cache for models/, git for metrics/train, kept there)."""
    before = files_under(pipeline_run / "models")
    edit_params(pipeline_run, train__batch_size=0)
    result = run(["dvc", "repro", "train"], cwd=pipeline_run, check=False)
    assert result.returncode != 0
    assert not (pipeline_run / "models").exists()
    error = next(line for line in result.stderr.splitlines() if line.startswith("error: "))
    assert error.endswith(
        "(DVC removed this stage's outputs before running it: `dvc checkout train` restores the previous "
        "models; `git checkout -- metrics/train` restores the committed metrics/train)"
    )
    run(["git", "checkout", "--", "params.yaml"], cwd=pipeline_run)
    run(["dvc", "checkout", "train"], cwd=pipeline_run)
    assert files_under(pipeline_run / "models") == before
