"""The label audit: confident learning over out-of-fold probabilities, its files, the stages reading them."""

import json
import runpy
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import PROJECT, edit_params, run_here, slice_mirror, stage_here

from finsent.audit import audit_split, fold_of_each_row, noise_table
from finsent.audit_files import (
    DOUBTFUL_COLUMNS,
    audit_code_sha256,
    doubtful_mask,
    drop_doubtful,
    read_doubtful,
    trusted_label_metrics,
    write_doubtful,
)
from finsent.config import LABELS
from finsent.data import SOURCE_FILES, read_source_csv, split_dev, to_jsonl
from finsent.distillation import CODE_KEY
from finsent.errors import FinsentError
from finsent.metrics import headline_metrics


def confident_split(rows: int, flipped: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """A split whose probabilities are sure of each row's true class, and whose given labels are wrong
    on `flipped` rows (the first ones): the frame, its probabilities and the flipped rows' indices."""
    rng = np.random.default_rng(seed)
    true = rng.choice(3, size=rows, p=[0.2, 0.25, 0.55])
    probabilities = np.full((rows, 3), 0.05)
    probabilities[np.arange(rows), true] = 0.9
    given = true.copy()
    given[:flipped] = (true[:flipped] + 1) % 3
    frame = pd.DataFrame({"id": np.arange(rows) + 1000, "text": [f"tweet {i}" for i in range(rows)]})
    return frame.assign(label=given), probabilities, np.arange(flipped)


def test_the_rows_whose_label_the_probabilities_contradict_are_doubtful_lowest_quality_first():
    frame, probabilities, flipped = confident_split(300, 12, seed=0)
    true_class = probabilities[flipped[0]].argmax()
    probabilities[flipped[0]] = 0.01  # the surest against its label: the first
    probabilities[flipped[0], true_class] = 0.98
    doubtful, figures = audit_split("train", frame, probabilities)

    assert list(doubtful.columns) == DOUBTFUL_COLUMNS
    assert sorted(doubtful["id"]) == sorted(frame["id"].iloc[flipped])
    assert doubtful["quality"].is_monotonic_increasing
    assert doubtful["id"].iloc[0] == frame["id"].iloc[flipped[0]]
    names = np.array(LABELS)
    given = frame.set_index("id")["label"]
    assert (doubtful["label"].to_numpy() == names[given[doubtful["id"]].to_numpy()]).all()
    assert (
        doubtful["suggested"].to_numpy() == names[probabilities[doubtful["id"] - 1000].argmax(axis=1)]
    ).all()

    assert (figures["rows"], figures["doubtful"]) == (300, 12)
    assert figures["doubtful_share"] == round(12 / 300, 4)
    for label, name in enumerate(LABELS):
        by_label = figures["by_label"][name]
        assert by_label["rows"] == (frame["label"] == label).sum()
        assert by_label["doubtful"] == (doubtful["label"] == name).sum()
    # Each true class's column of the noise matrix sums to 1; the estimated rows add up to the split.
    for true in LABELS:
        assert sum(figures["noise_matrix"][true].values()) == pytest.approx(1, abs=1e-3)
    assert sum(sum(row.values()) for row in figures["estimated_rows"].values()) == pytest.approx(300, abs=3)
    assert figures["model"]["accuracy"] == pytest.approx(1 - 12 / 300, abs=1e-4)

    table = noise_table(figures)
    assert list(table.columns) == ["true_label", "given_label", "share", "rows"]
    assert len(table) == 9


def test_clean_labels_leave_nothing_doubtful_and_an_identity_noise_matrix():
    frame, probabilities, _ = confident_split(200, 0, seed=1)
    doubtful, figures = audit_split("validation", frame, probabilities)
    assert doubtful.empty and figures["doubtful"] == 0
    assert all(figures["noise_matrix"][name][name] == 1.0 for name in LABELS)


def test_a_split_without_a_class_is_one_line():
    frame, probabilities, _ = confident_split(50, 0, seed=2)
    frame["label"] = frame["label"].replace(0, 1)
    with pytest.raises(FinsentError, match=r"^validation split: no Bearish row \(the audit needs"):
        audit_split("validation", frame, probabilities)


def test_folds_are_stratified_seeded_and_need_a_row_of_each_class_each():
    labels = np.repeat([0, 1, 2], [10, 15, 35])
    fold = fold_of_each_row(labels, 5, seed=0)
    assert sorted(set(fold)) == [0, 1, 2, 3, 4]
    for index in range(5):
        assert np.bincount(labels[fold == index], minlength=3).tolist() == [2, 3, 7]
    assert (fold == fold_of_each_row(labels, 5, seed=0)).all()
    assert (fold != fold_of_each_row(labels, 5, seed=1)).any()
    with pytest.raises(FinsentError, match=r"^audit.folds: 11, but train has 10 Bearish rows"):
        fold_of_each_row(labels, 11, seed=0)


def written(tmp_path: Path, frame: pd.DataFrame) -> Path:
    file = tmp_path / "doubtful.csv"
    write_doubtful(file, frame.assign(suggested="Neutral", quality=0.1, label="Bullish"))
    return file


def test_doubtful_rows_mark_a_split_and_leave_training_with_their_copies(tmp_path):
    train = pd.DataFrame({"id": [3, 5, 8, 9], "text": list("abcd"), "label": [0, 1, 2, 2]})
    file = written(tmp_path, train.iloc[[1, 3]])
    assert read_doubtful(file)["id"].tolist() == [5, 9]
    assert doubtful_mask(file, "train", train["id"]).tolist() == [False, True, False, True]

    # Train's rows then an augmented copy of each (carrying its row's id), with the teacher's logits.
    rows = pd.concat([train, train.assign(label=None)], ignore_index=True)
    logits = np.arange(len(rows) * 3, dtype=np.float32).reshape(-1, 3)
    kept, kept_logits = drop_doubtful(rows, logits, file, train["id"])
    assert kept["id"].tolist() == [3, 8, 3, 8]
    assert kept_logits.tolist() == logits[[0, 2, 4, 6]].tolist()
    kept, no_logits = drop_doubtful(train, None, file, train["id"])
    assert kept["id"].tolist() == [3, 8] and no_logits is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "doubtful.csv: missing (the audit stage writes it: `make audit`)"),
        ("", "doubtful.csv: not a readable CSV file (EmptyDataError)"),
        ("id,text,label\n1,a,Bullish\n", "doubtful.csv: missing column(s) suggested, quality"),
        (
            "id,text,label,suggested,quality\n1,a,Bullish,Neutral,0.1\nx,b,Bullish,Neutral,0.2\n",
            "doubtful.csv: row 2: id 'x' is not a whole number",
        ),
        (
            "id,text,label,suggested,quality\n7,a,Bullish,Neutral,0.1\n",
            "doubtful.csv: id 7 is not a row of the train split: the audit was made on other data",
        ),
    ],
)
def test_an_unusable_doubtful_file_is_one_line_naming_it(tmp_path, content, message):
    file = tmp_path / "doubtful.csv"
    if content is not None:
        file.write_text(content)
    with pytest.raises(FinsentError) as error:
        doubtful_mask(file, "train", pd.Series([1, 2, 3]))
    assert str(error.value).startswith(f"{file.parent}/{message}")
    assert "\n" not in str(error.value)


def test_trusted_labels_score_the_rows_the_audit_does_not_doubt():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 100)
    probabilities = rng.dirichlet(np.ones(3), 100)
    doubtful = rng.random(100) < 0.2
    trusted = trusted_label_metrics(labels, probabilities, doubtful)
    expected = headline_metrics(labels[~doubtful], probabilities[~doubtful])
    assert trusted == {
        "macro_f1": expected["macro_f1"],
        "accuracy": expected["accuracy"],
        "rows": int((~doubtful).sum()),
    }


@pytest.fixture(scope="module")
def audit_project(tmp_path_factory, tiny_bert_dir) -> Path:
    """A folder with params.yaml set to audit with the tiny model (2 folds, 1 epoch) and raw splits of
    the first rows of the real data (300 train, 60 dev, 100 validation)."""
    project = tmp_path_factory.mktemp("audit-project")
    shutil.copy(PROJECT / "params.yaml", project / "params.yaml")
    edit_params(
        project,
        audit__checkpoint=str(tiny_bert_dir),
        audit__folds=2,
        audit__train__epochs=1,
        audit__train__batch_size=16,
    )
    mirror = slice_mirror(project / "mirror", {"train": 600, "validation": 200})
    train, dev = split_dev(read_source_csv(mirror / SOURCE_FILES["train"]), 0.1, 0)
    validation = read_source_csv(mirror / SOURCE_FILES["validation"])
    (project / "data/raw").mkdir(parents=True)
    for split, frame in (("train", train.iloc[::2]), ("dev", dev), ("validation", validation.iloc[::2])):
        (project / "data/raw" / f"{split}.jsonl").write_bytes(to_jsonl(frame))
    return project


AUDIT_ARGS = ("data/raw", "data/audit", "metrics/audit.json")


def test_the_audit_stage_writes_each_splits_doubtful_rows_the_noise_matrix_and_its_figures(
    audit_project, tmp_path
):
    project = shutil.copytree(audit_project, tmp_path / "project")
    result = stage_here("audit.py", *AUDIT_ARGS, cwd=project)
    assert result.returncode == 0, result.stderr
    assert "audit: fold 1/2: training on" in result.stderr and "audit: fold 2/2" in result.stderr

    metrics = json.loads((project / "metrics/audit.json").read_text())
    assert metrics[CODE_KEY] == audit_code_sha256(PROJECT)
    assert sorted((project / "data/audit").iterdir()) == [
        project / "data/audit" / name for name in ("noise_matrix.csv", "train.csv", "validation.csv")
    ]
    for split in ("train", "validation"):
        rows = pd.read_json(project / f"data/raw/{split}.jsonl", lines=True)
        doubtful = read_doubtful(project / f"data/audit/{split}.csv")
        assert metrics[split]["rows"] == len(rows)
        assert metrics[split]["doubtful"] == len(doubtful)
        assert set(doubtful["id"]) <= set(rows["id"])
        given = rows.set_index("id").loc[doubtful["id"], "label"].map(dict(enumerate(LABELS)))
        assert doubtful["label"].tolist() == given.tolist()
    noise = pd.read_csv(project / "data/audit/noise_matrix.csv")
    assert noise.groupby("true_label")["share"].sum().to_numpy() == pytest.approx(1, abs=1e-3)


def test_a_failed_audit_leaves_the_previous_outputs_as_they_were(audit_project, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(audit_project, project)
    (project / "data/audit").mkdir(parents=True, exist_ok=True)
    (project / "data/audit/train.csv").write_text("the previous audit\n")
    (project / "metrics").mkdir(exist_ok=True)
    (project / "metrics/audit.json").write_text("{}\n")
    # Validation without a Bearish row: the stage fails after training, at the confident learning.
    validation = pd.read_json(project / "data/raw/validation.jsonl", lines=True)
    (project / "data/raw/validation.jsonl").write_bytes(to_jsonl(validation[validation["label"] != 0]))

    result = stage_here("audit.py", *AUDIT_ARGS, cwd=project)

    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "error: validation split: no Bearish row (the audit needs rows of every class)"
    )
    assert (project / "data/audit/train.csv").read_text() == "the previous audit\n"
    assert (project / "metrics/audit.json").read_text() == "{}\n"
    assert sorted(path.name for path in (project / "data").iterdir()) == ["audit", "raw"]  # no staging left


def test_too_many_folds_stop_the_audit_before_training(audit_project, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(audit_project, project)
    edit_params(project, audit__folds=1000)
    result = stage_here("audit.py", *AUDIT_ARGS, cwd=project)
    assert result.returncode == 1
    assert result.stderr.startswith("error: audit.folds: 1000, but train has ")
    assert not (project / "data/audit").exists() and not (project / "metrics/audit.json").exists()


def test_tokenize_leaves_out_the_doubtful_rows_only_when_told(audit_project, tmp_path, tiny_bert_dir):
    project = tmp_path / "project"
    shutil.copytree(audit_project, project)
    edit_params(project, model__checkpoint=str(tiny_bert_dir), distill__enabled=False)
    args = ("data/raw", "data/teacher", "data/audit/train.csv", "data/tokenized")
    train = pd.read_json(project / "data/raw/train.jsonl", lines=True)

    # Off (the default): the audit's file is not read at all.
    assert stage_here("tokenize_splits.py", *args, cwd=project).returncode == 0
    assert pq.read_table(project / "data/tokenized/train.parquet").num_rows == len(train)

    (project / "data/audit").mkdir(parents=True)
    write_doubtful(
        project / "data/audit/train.csv",
        train.iloc[[0, 5, 9]].assign(label="Bullish", suggested="Neutral", quality=0.1),
    )
    edit_params(project, tokenize__drop_doubtful=True)
    result = stage_here("tokenize_splits.py", *args, cwd=project)
    assert result.returncode == 0, result.stderr
    assert "left out: 3 rows the audit doubts" in result.stdout
    assert pq.read_table(project / "data/tokenized/train.parquet").num_rows == len(train) - 3


def hand_check(*args: str, cwd: Path):
    script = str(PROJECT / "scripts/audit_hand_check.py")
    return run_here(lambda: runpy.run_path(script, run_name="__main__"), [script, *args], cwd)


def test_the_hand_check_samples_blind_and_scores_each_groups_share_of_wrong_labels(tmp_path):
    train = pd.DataFrame({"id": range(20), "text": [f"tweet {i}" for i in range(20)], "label": [2] * 20})
    (tmp_path / "data/raw").mkdir(parents=True)
    (tmp_path / "data/raw/train.jsonl").write_bytes(to_jsonl(train))
    (tmp_path / "data/audit").mkdir()
    flagged = train.iloc[:6]
    write_doubtful(
        tmp_path / "data/audit/train.csv", flagged.assign(label="Neutral", suggested="Bullish", quality=0.1)
    )

    assert hand_check("sample", "--per-group", "3", cwd=tmp_path).returncode == 0
    judgments = pd.read_csv(tmp_path / "data/hand_check/judgments.csv", keep_default_na=False)
    assert list(judgments.columns) == ["id", "text", "label", "label_wrong", "why"]  # nothing of the flag
    assert judgments["id"].isin(flagged["id"]).sum() == 3 and len(judgments) == 6
    again = hand_check("sample", cwd=tmp_path)
    assert again.returncode == 1 and "exists, and may hold judgments" in again.stderr

    judgments["label_wrong"] = np.where(judgments["id"].isin(flagged["id"]), "yes", "no")
    judgments.loc[~judgments["id"].isin(flagged["id"]), "label_wrong"] = ["yes", "no", "no"]
    judgments.to_csv(tmp_path / "data/hand_check/judgments.csv", index=False)
    assert hand_check("score", cwd=tmp_path).returncode == 0
    result = json.loads((tmp_path / "data/hand_check/result.json").read_text())
    assert result == {
        "flagged": {"rows": 3, "label_wrong": 3, "share_wrong": 1.0},
        "unflagged": {"rows": 3, "label_wrong": 1, "share_wrong": 0.3333},
        "ratio": 3.0,
    }
