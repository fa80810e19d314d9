"""The significance of a change: values checked against scikit-learn, a plain loop and exact binomials."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import SOURCE_ENV, commit_files, git_dvc_repo, noisy_pair, predictions_frame, run, run_here
from sklearn.metrics import accuracy_score, f1_score

from finsent.config import LABELS
from finsent.errors import FinsentError
from finsent.experiments.compare import cli as finsent_compare
from finsent.experiments.compare import compare_predictions, comparison_markdown, read_predictions


def scores(frame: pd.DataFrame, rows=slice(None)) -> dict[str, float]:
    actual, predicted = frame["actual"].to_numpy()[rows], frame["predicted"].to_numpy()[rows]
    return {
        "accuracy": accuracy_score(actual, predicted),
        "macro_f1": f1_score(actual, predicted, labels=list(LABELS), average="macro", zero_division=0),
    }


def test_values_match_scikit_learn_and_a_loop_over_resamples():
    baseline, candidate = noisy_pair(rows=60, seed=3)
    comparison = compare_predictions(baseline, candidate, resamples=300, seed=11)

    # The same resamples, drawn one at a time from the same seed, scored by scikit-learn.
    rng = np.random.default_rng(11)
    differences = {"accuracy": [], "macro_f1": []}
    for _ in range(300):
        rows = rng.integers(0, 60, size=60)
        old, new = scores(baseline, rows), scores(candidate, rows)
        for metric in differences:
            differences[metric].append(new[metric] - old[metric])

    assert [m.metric for m in comparison.metrics] == ["accuracy", "macro_f1"]
    for m in comparison.metrics:
        assert m.baseline == pytest.approx(scores(baseline)[m.metric], abs=1e-12)
        assert m.candidate == pytest.approx(scores(candidate)[m.metric], abs=1e-12)
        assert m.difference == pytest.approx(m.candidate - m.baseline, abs=1e-12)
        low, high = np.percentile(differences[m.metric], [2.5, 97.5])
        assert (m.ci_low, m.ci_high) == pytest.approx((low, high), abs=1e-12)
        assert m.ci_low < m.difference < m.ci_high


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_rows():
    # 6 rows right only in the baseline, 16 only in the candidate, 10 right in both, 3 wrong in both.
    actual = np.zeros(35, dtype=int)
    baseline = np.r_[np.zeros(6), np.ones(16), np.zeros(10), np.ones(3)].astype(int)
    candidate = np.r_[np.ones(6), np.zeros(16), np.zeros(10), np.ones(3)].astype(int)
    comparison = compare_predictions(
        predictions_frame(actual, baseline), predictions_frame(actual, candidate), resamples=10
    )
    assert (comparison.baseline_only_correct, comparison.candidate_only_correct) == (6, 16)
    two_sided = 2 * sum(math.comb(22, k) for k in range(7)) / 2**22
    assert comparison.mcnemar_p == pytest.approx(two_sided, rel=1e-12)
    assert comparison.mcnemar_p == pytest.approx(0.0525, abs=1e-4)


def test_identical_predictions_differ_by_nothing():
    baseline, _ = noisy_pair(rows=100, seed=1)
    comparison = compare_predictions(baseline, baseline.copy(), resamples=50)
    assert all((m.difference, m.ci_low, m.ci_high) == (0, 0, 0) for m in comparison.metrics)
    assert comparison.mcnemar_p == 1.0
    assert "| accuracy |" in comparison_markdown(comparison)
    assert "| no |" in comparison_markdown(comparison)


def test_same_seed_same_interval_and_a_clear_change_is_significant():
    baseline, candidate = noisy_pair(rows=2388, seed=5)
    first = compare_predictions(baseline, candidate, resamples=2000, seed=4)
    assert compare_predictions(baseline, candidate, resamples=2000, seed=4) == first
    assert all(m.ci_low > 0 for m in first.metrics)
    assert first.mcnemar_p < 1e-3
    assert comparison_markdown(first).count("| yes |") == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda frame: frame.iloc[:-1], "has 100 rows and candidate 99: not the same split"),
        (lambda frame: frame.iloc[::-1], "different ids or row order: row 1 has id '0' in one and '99'"),
        (
            lambda frame: frame.assign(actual=np.roll(frame["actual"].to_numpy(), 1)),
            "different actual classes",
        ),
    ],
)
def test_predictions_of_different_rows_are_refused(change, message):
    baseline, candidate = noisy_pair(rows=100, seed=2)
    with pytest.raises(FinsentError, match=message):
        compare_predictions(baseline, change(candidate))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id,actual\n0,Bearish\n", "missing column\\(s\\) predicted"),
        (
            "id,actual,predicted\n0,Bearish,Neutral\n1,Bearish,Bull\n",
            "row 2, column predicted: unknown class 'Bull'",
        ),
        ("id,actual,predicted\n", "no rows"),
        ("", "empty, not even a header"),
        ("id,actual,predicted\n1,Bearish,Bullish,\n", "line 2: field count 4, the header's 3"),
    ],
)
def test_bad_predictions_files_are_refused(tmp_path, content, message):
    path = tmp_path / "predictions.csv"
    path.write_text(content)
    with pytest.raises(FinsentError, match=f"^{path}: {message}"):
        read_predictions(str(path))


def test_resamples_must_be_positive():
    baseline, candidate = noisy_pair(rows=10, seed=0)
    with pytest.raises(FinsentError, match="resamples: must be at least 1"):
        compare_predictions(baseline, candidate, resamples=0)


def test_command_reads_git_revisions_and_names_what_is_wrong(tmp_path, monkeypatch):
    baseline, candidate = noisy_pair(rows=200, seed=8)
    repo = git_dvc_repo(tmp_path / "repo")
    commit_files(repo, {"plots/predictions.csv": baseline.to_csv(index=False)}, "baseline")
    candidate.to_csv(repo / "plots/predictions.csv", index=False)

    def compare(*args):
        command = ["python", "-m", "finsent.experiments.compare", *args]
        return run(command, cwd=repo, env=SOURCE_ENV)

    shown = json.loads(compare("main:plots/predictions.csv", "plots/predictions.csv", "--json").stdout)
    expected = compare_predictions(baseline, candidate, resamples=10_000, seed=0)
    assert shown["baseline"] == "main:plots/predictions.csv"
    assert shown["rows"] == 200
    assert [m["candidate"] for m in shown["metrics"]] == [m.candidate for m in expected.metrics]
    assert [m["ci_low"] for m in shown["metrics"]] == [m.ci_low for m in expected.metrics]
    # A bad revision: the command's code in this process (`run_here`), its real process being above.
    argv = ["finsent-compare", "nope:plots/predictions.csv", "plots/predictions.csv"]
    result = run_here(finsent_compare, argv, repo)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: nope:plots/predictions.csv: unknown Git revision 'nope'"

    monkeypatch.chdir(repo)
    pd.testing.assert_frame_equal(read_predictions("HEAD:plots/predictions.csv"), baseline)
    for source, message in [
        ("main:plots/other.csv", "main:plots/other.csv: no such file at revision main"),
        ("missing.csv", "missing.csv: file not found"),
    ]:
        with pytest.raises(FinsentError, match=f"^{message}$"):
            read_predictions(source)
