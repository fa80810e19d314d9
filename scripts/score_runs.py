"""Scores of runs already trained, without training them again: each run, their spread, their ensemble.

    python scripts/score_runs.py [--split dev|validation] [--ensemble] REV [REV ...]

For each run (an experiment name or a commit, as `dvc exp list` shows them): its `models/` from the
DVC cache, scored by the evaluate stage's own script on `data/raw/<split>.jsonl` (each run applies
its own saved text normalisation). Prints a Markdown row a run, then the mean and sample standard
deviation of macro-F1 and accuracy. `--ensemble` adds a row for the runs' class probabilities
averaged, tweet by tweet: what an ensemble of these models would score.

What it is for: the other seeds of the committed params (issue 5 asks for three) run up to `train`
as experiments; validation is read here, once, for those runs alone. Ideas that need no training,
such as an ensemble, are judged here on dev (`--split dev`) before validation is read for any.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from ruamel.yaml import YAML

from finsent.config import LABELS
from finsent.metrics import headline_metrics

PROJECT = Path(__file__).resolve().parents[1]


def dvc_get(path: str, rev: str, out: Path) -> Path:
    subprocess.run(["dvc", "get", ".", path, "--rev", rev, "-o", str(out)], cwd=PROJECT, check=True)
    return out


def score(rev: str, split: str, folder: Path) -> tuple[int, dict, pd.DataFrame]:
    """The run's seed, its metrics on the split and its predictions table (the evaluate stage's)."""
    models = dvc_get("models", rev, folder / "models")
    recorded = dvc_get("metrics/train/params.yaml", rev, folder / "params.yaml")
    stage = [sys.executable, "stages/evaluate.py", str(models), f"data/raw/{split}.jsonl"]
    stage += [str(folder / "metrics.json"), str(folder / "plots")]
    env = os.environ | {"PYTHONPATH": "src"}
    done = subprocess.run(stage, cwd=PROJECT, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"scoring {rev} failed:\n{done.stderr}")
    seed = YAML(typ="safe").load(recorded.read_text())["train"]["seed"]
    metrics = json.loads((folder / "metrics.json").read_text())
    return seed, metrics, pd.read_csv(folder / "plots" / "predictions.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("revs", nargs="+", metavar="REV")
    parser.add_argument("--split", choices=("dev", "validation"), default="validation")
    parser.add_argument("--ensemble", action="store_true", help="add the averaged probabilities' row")
    args = parser.parse_args()
    print(f"| run | seed | {args.split} macro-F1 | accuracy |\n|---|---|---|---|")
    scores, probabilities = [], []
    with tempfile.TemporaryDirectory() as work:
        for index, rev in enumerate(args.revs):
            seed, metrics, predictions = score(rev, args.split, Path(work) / str(index))
            scores.append((metrics["macro_f1"], metrics["accuracy"]))
            probabilities.append(predictions[[f"p_{name}" for name in LABELS]].to_numpy())
            print(f"| {rev} | {seed} | {metrics['macro_f1']:.4f} | {metrics['accuracy']:.4f} |", flush=True)
    if len(scores) > 1:
        f1, accuracy = zip(*scores, strict=True)
        print(
            f"| mean (sd) | | {statistics.mean(f1):.4f} ({statistics.stdev(f1):.4f}) "
            f"| {statistics.mean(accuracy):.4f} ({statistics.stdev(accuracy):.4f}) |"
        )
    if args.ensemble:
        labels = predictions["actual"].map(LABELS.index).to_numpy()
        mean = np.mean(probabilities, axis=0)  # each run's were rounded to 6 decimals: sum to 1 again
        ensemble = headline_metrics(labels, mean / mean.sum(axis=1, keepdims=True))
        print(f"| ensemble of {len(scores)} | | {ensemble['macro_f1']:.4f} | {ensemble['accuracy']:.4f} |")


if __name__ == "__main__":
    main()
