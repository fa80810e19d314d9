"""Is a change of model real? Two systems' predictions on one split, compared row by row.

For accuracy and macro-F1: each system's value, the difference, and a 95% paired bootstrap confidence
interval of the difference; for accuracy also McNemar's exact test. A predictions file is a CSV with
`id`, `actual` and `predicted` columns (as `plots/predictions.csv`), read from a path or from a git
revision as `REV:PATH` (a branch, a commit, a tag or a DVC experiment name).
"""

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from finsent import dvc_access
from finsent.cli import run_cli
from finsent.config import LABELS
from finsent.errors import FinsentError
from finsent.strict_csv import read_csv_frame

PREDICTION_COLUMNS = ("id", "actual", "predicted")
_K = len(LABELS)
_RESAMPLES_PER_CHUNK = 500  # bounds memory: a chunk holds 500 x rows resampled indices


def read_predictions(source: str) -> pd.DataFrame:
    """The predictions CSV at `source`: a file, or `REV:PATH` for the file at a git revision."""
    if Path(source).is_file() or ":" not in source:
        try:
            return _parse_predictions(Path(source).read_bytes(), source)
        except FileNotFoundError:
            raise FinsentError(f"{source}: file not found") from None
    rev, path = source.split(":", 1)
    return _parse_predictions(dvc_access.read_bytes(path, rev), source)


def _parse_predictions(content: bytes, source: str) -> pd.DataFrame:
    try:
        frame = read_csv_frame(source, content.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise FinsentError(f"{source}: not UTF-8 (byte {error.start})") from None
    missing = [column for column in PREDICTION_COLUMNS if column not in frame.columns]
    if missing:
        raise FinsentError(f"{source}: missing column(s) {', '.join(missing)}")
    if frame.empty:
        raise FinsentError(f"{source}: no rows")
    for column in ("actual", "predicted"):
        unknown = ~frame[column].isin(LABELS)
        if unknown.any():
            row = int(unknown.to_numpy().argmax())
            raise FinsentError(
                f"{source}: row {row + 1}, column {column}: unknown class '{frame[column].iloc[row]}' "
                f"(expected one of {', '.join(LABELS)})"
            )
    return frame


@dataclass(frozen=True)
class MetricComparison:
    metric: str
    baseline: float
    candidate: float
    difference: float  # candidate - baseline
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Comparison:
    baseline: str
    candidate: str
    rows: int
    resamples: int
    seed: int
    metrics: list[MetricComparison]
    baseline_only_correct: int  # McNemar's discordant pairs: rows that only the baseline gets right
    candidate_only_correct: int
    mcnemar_p: float  # exact (binomial) two-sided p-value


def compare_predictions(
    baseline: pd.DataFrame,
    candidate: pd.DataFrame,
    names: tuple[str, str] = ("baseline", "candidate"),
    resamples: int = 10_000,
    seed: int = 0,
) -> Comparison:
    """Compare two predictions tables of the same rows, in the same order (see the module docstring)."""
    if resamples < 1:
        raise FinsentError(f"resamples: must be at least 1, got {resamples}")
    _check_same_rows(baseline, candidate, names)
    actual = baseline["actual"].map(LABELS.index).to_numpy()
    predicted_a = baseline["predicted"].map(LABELS.index).to_numpy()
    predicted_b = candidate["predicted"].map(LABELS.index).to_numpy()
    # Each row is one of K^3 cells (actual, baseline's prediction, candidate's prediction): every metric
    # of both systems follows from the counts of these cells, for all the rows or for a resample.
    cells = (actual * _K + predicted_a) * _K + predicted_b
    point = _metrics_from_counts(np.bincount(cells, minlength=_K**3)[None])
    differences = _bootstrap_differences(cells, resamples, seed)
    comparisons = [
        MetricComparison(
            metric,
            float(point[metric][0][0]),
            float(point[metric][1][0]),
            float(point[metric][1][0] - point[metric][0][0]),
            *(float(bound) for bound in np.percentile(differences[metric], [2.5, 97.5])),
        )
        for metric in ("accuracy", "macro_f1")
    ]
    baseline_right = predicted_a == actual
    candidate_right = predicted_b == actual
    baseline_only = int((baseline_right & ~candidate_right).sum())
    candidate_only = int((candidate_right & ~baseline_right).sum())
    discordant = baseline_only + candidate_only
    # McNemar's exact test: under no difference, each discordant row is a fair coin flip.
    p_value = binomtest(baseline_only, discordant, 0.5).pvalue if discordant else 1.0
    return Comparison(
        *names, len(cells), resamples, seed, comparisons, baseline_only, candidate_only, float(p_value)
    )


def _check_same_rows(baseline: pd.DataFrame, candidate: pd.DataFrame, names: tuple[str, str]) -> None:
    if len(baseline) != len(candidate):
        raise FinsentError(
            f"{names[0]} has {len(baseline)} rows and {names[1]} {len(candidate)}: not the same split"
        )
    for column, problem in (("id", "different ids or row order"), ("actual", "different actual classes")):
        differs = baseline[column].to_numpy() != candidate[column].to_numpy()
        if differs.any():
            row = int(differs.argmax())
            raise FinsentError(
                f"{names[0]} and {names[1]}: {problem}: row {row + 1} has {column} "
                f"'{baseline[column].iloc[row]}' in one and '{candidate[column].iloc[row]}' in the other"
            )


def _bootstrap_differences(cells: np.ndarray, resamples: int, seed: int) -> dict[str, np.ndarray]:
    """Candidate minus baseline of each metric on `resamples` resamples of the rows (with replacement)."""
    rng = np.random.default_rng(seed)
    rows = len(cells)
    chunks = []
    for start in range(0, resamples, _RESAMPLES_PER_CHUNK):
        size = min(_RESAMPLES_PER_CHUNK, resamples - start)
        resampled = cells[rng.integers(0, rows, size=(size, rows))]  # (size, rows)
        # One bincount for the whole chunk: resample i's cells are offset by i * K^3.
        offsets = np.arange(size)[:, None] * _K**3
        counts = np.bincount((resampled + offsets).ravel(), minlength=size * _K**3)
        chunks.append(counts.reshape(size, _K**3))
    metrics = _metrics_from_counts(np.concatenate(chunks))
    return {metric: candidate - baseline for metric, (baseline, candidate) in metrics.items()}


def _metrics_from_counts(counts: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Accuracy and macro-F1 of baseline and candidate from cell counts (resamples, K^3)."""
    cube = counts.reshape(-1, _K, _K, _K)  # (resamples, actual, baseline's, candidate's prediction)
    confusions = (cube.sum(axis=3), cube.sum(axis=2))  # each (resamples, actual, predicted)
    result = {"accuracy": [], "macro_f1": []}
    for confusion in confusions:
        true_positives = np.diagonal(confusion, axis1=1, axis2=2)  # (resamples, K)
        # 2 TP + FP + FN = (TP + FN) + (TP + FP): the class's rows plus its predictions.
        denominator = confusion.sum(axis=2) + confusion.sum(axis=1)
        f1 = np.divide(
            2 * true_positives, denominator, out=np.zeros(denominator.shape), where=denominator > 0
        )  # a class absent from both truth and predictions scores 0, as scikit-learn's zero_division=0
        result["accuracy"].append(true_positives.sum(axis=1) / confusion.sum(axis=(1, 2)))
        result["macro_f1"].append(f1.mean(axis=1))
    return {metric: tuple(values) for metric, values in result.items()}


def mcnemar_sentence(comparison: Comparison) -> str:
    c = comparison
    return (
        f"McNemar's exact test (accuracy): {c.baseline_only_correct} rows right only in {c.baseline}, "
        f"{c.candidate_only_correct} right only in {c.candidate}; p = {c.mcnemar_p:.4g}."
    )


def bootstrap_sentence(comparison: Comparison) -> str:
    c = comparison
    return (
        f"{c.rows} rows paired by id; paired bootstrap of {c.resamples} resamples (seed {c.seed}), "
        "percentile interval."
    )


def comparison_markdown(comparison: Comparison) -> str:
    """The comparison as a Markdown table, a line for McNemar's test and one for the bootstrap."""
    c = comparison
    lines = [
        f"| metric | {c.baseline} | {c.candidate} | difference | 95% CI of the difference | CI excludes 0 |",
        "|---|---|---|---|---|---|",
        *(
            f"| {m.metric} | {m.baseline:.4f} | {m.candidate:.4f} | {m.difference:+.4f} "
            f"| [{m.ci_low:+.4f}, {m.ci_high:+.4f}] | {'yes' if m.ci_low > 0 or m.ci_high < 0 else 'no'} |"
            for m in c.metrics
        ),
        "",
        mcnemar_sentence(c),
        "",
        bootstrap_sentence(c),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("baseline", help="predictions CSV, or REV:PATH, e.g. main:plots/predictions.csv")
    parser.add_argument("candidate", help="predictions CSV, or REV:PATH")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (10000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (0)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args()
    comparison = compare_predictions(
        read_predictions(args.baseline),
        read_predictions(args.candidate),
        names=(args.baseline, args.candidate),
        resamples=args.resamples,
        seed=args.seed,
    )
    print(json.dumps(asdict(comparison), indent=2) if args.json else comparison_markdown(comparison).rstrip())


def cli() -> None:
    """The `finsent-compare` command: main() with expected errors as one line."""
    run_cli(main)


if __name__ == "__main__":
    cli()
