"""Scores of runs already trained, without training them again: each run, their spread, their ensemble.

    finsent-score-runs [--split dev|validation] [--ensemble] REV [REV ...]

For each run (an experiment name or a commit, as `dvc exp list` shows them): its `models/` from the
DVC cache, scored on `data/raw/<split>.jsonl` as the evaluate stage scores it (the same predictor,
which applies the run's own saved text normalisation, and the same metrics). Prints a Markdown row
a run, then the mean and sample standard deviation of macro-F1 and accuracy. `--ensemble` adds a row
for the runs' class probabilities averaged, tweet by tweet: what an ensemble of these models scores.

What it is for: the other seeds of the committed params run up to `train` as experiments;
validation is read here, once, for those runs alone. Ideas that need no training,
such as an ensemble, are judged here on dev (`--split dev`) before validation is read for any.
"""

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from ruamel.yaml import YAML

from finsent.cli import run_cli
from finsent.config import load_params
from finsent.data import read_jsonl
from finsent.metrics import headline_metrics
from finsent.predictors import TorchPredictor


def dvc_get(path: str, rev: str, out: Path) -> Path:
    subprocess.run(["dvc", "get", ".", path, "--rev", rev, "-o", str(out)], check=True)
    return out


def run_probabilities(rev: str, texts: list[str], folder: Path) -> tuple[int, np.ndarray]:
    """The run's seed and its class probabilities for `texts`."""
    models = dvc_get("models", rev, folder / "models")
    recorded = dvc_get("metrics/train/params.yaml", rev, folder / "params.yaml")
    predictor = TorchPredictor.from_dir(models, load_params().evaluate.batch_size)
    return YAML(typ="safe").load(recorded.read_text())["train"]["seed"], predictor.predict_proba(texts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("revs", nargs="+", metavar="REV")
    parser.add_argument("--split", choices=("dev", "validation"), default="validation")
    parser.add_argument("--ensemble", action="store_true", help="add the averaged probabilities' row")
    args = parser.parse_args(argv)
    print(f"| run | seed | {args.split} macro-F1 | accuracy |\n|---|---|---|---|")
    split = read_jsonl(Path("data") / "raw" / f"{args.split}.jsonl")
    labels = split["label"].to_numpy()
    scores, probabilities = [], []
    with tempfile.TemporaryDirectory() as work:
        for index, rev in enumerate(args.revs):
            seed, run = run_probabilities(rev, split["text"].tolist(), Path(work) / str(index))
            metrics = headline_metrics(labels, run)
            scores.append((metrics["macro_f1"], metrics["accuracy"]))
            probabilities.append(run)
            print(f"| {rev} | {seed} | {metrics['macro_f1']:.4f} | {metrics['accuracy']:.4f} |", flush=True)
    if len(scores) > 1:
        f1, accuracy = zip(*scores, strict=True)
        print(
            f"| mean (sd) | | {statistics.mean(f1):.4f} ({statistics.stdev(f1):.4f}) "
            f"| {statistics.mean(accuracy):.4f} ({statistics.stdev(accuracy):.4f}) |"
        )
    if args.ensemble:
        ensemble = headline_metrics(labels, np.mean(probabilities, axis=0))
        print(f"| ensemble of {len(scores)} | | {ensemble['macro_f1']:.4f} | {ensemble['accuracy']:.4f} |")


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
