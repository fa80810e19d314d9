"""Scores of runs already trained, without training them again: each run, their spread, their ensemble.

    finsent-score-runs [--split dev|validation] [--ensemble] REV [REV ...]
    finsent-score-runs [--split dev|validation] GROUP=REV,REV,... [GROUP=REV,...]

For each run (an experiment name or a commit, as `dvc exp list` shows them): its `models/` from the
DVC cache, scored on `data/raw/<split>.jsonl` as the evaluate stage scores it (the same predictor,
which applies the run's own saved text normalisation, and the same metrics). Prints one Markdown
table: a row a run, then for each group of runs the mean and sample standard deviation of macro-F1
and accuracy (plain REVs form one group). `--ensemble` adds a row a group for the runs' class
probabilities averaged, tweet by tweet: what an ensemble of these models scores. Groups put, for
example, three seeds of the distilled student beside the same seeds trained without the teacher.

What it is for: the other seeds of the committed params run up to `train` as experiments;
validation is read here, once, for those runs alone. Ideas that need no training,
such as an ensemble, are judged here on dev (`--split dev`) before validation is read for any.
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np

from finsent import dvc_access
from finsent.cli import run_cli
from finsent.config import load_params
from finsent.data import read_jsonl
from finsent.errors import FinsentError
from finsent.experiments.sweep_summary import TRAIN_PARAMS
from finsent.inference.predictors import TorchPredictor
from finsent.metrics import headline_metrics


def run_probabilities(rev: str, texts: list[str], folder: Path) -> tuple[int, np.ndarray]:
    """The run's seed and its class probabilities for `texts`."""
    recorded = dvc_access.yaml_at(TRAIN_PARAMS, rev)
    models = dvc_access.download("models", rev, folder / "models")
    predictor = TorchPredictor.from_dir(models, load_params().evaluate.batch_size)
    return recorded["train"]["seed"], predictor.predict_proba(texts)


def parse_groups(arguments: list[str]) -> dict[str, list[str]]:
    """`GROUP=REV,REV` arguments as {GROUP: [REV, REV]}; plain REVs as one group named ""."""
    groups: dict[str, list[str]] = {}
    for argument in arguments:
        name, _, revs = argument.rpartition("=") if "=" in argument else ("", "", argument)
        if not all(revs.split(",")):
            raise FinsentError(f"{argument!r}: an empty revision (expected GROUP=REV,REV,... or REV)")
        groups.setdefault(name, []).extend(revs.split(","))
    return groups


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="REV or GROUP=REV,REV,...")
    parser.add_argument("--split", choices=("dev", "validation"), default="validation")
    parser.add_argument("--ensemble", action="store_true", help="add each group's averaged probabilities")
    args = parser.parse_args(argv)
    groups = parse_groups(args.runs)
    split_file = Path("data") / "raw" / f"{args.split}.jsonl"
    if not split_file.is_file():
        raise FinsentError(f"{split_file}: missing (run `dvc repro download` first)")
    split = read_jsonl(split_file)
    labels = split["label"].to_numpy()
    print(f"| group | run | seed | {args.split} macro-F1 | accuracy |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for group, revs in groups.items():
            scores, probabilities = [], []
            for rev in revs:
                folder = Path(work) / str(len(list(Path(work).iterdir())))
                seed, run = run_probabilities(rev, split["text"].tolist(), folder)
                metrics = headline_metrics(labels, run)
                scores.append((metrics["macro_f1"], metrics["accuracy"]))
                probabilities.append(run)
                print(
                    f"| {group} | {rev} | {seed} | {metrics['macro_f1']:.4f} | {metrics['accuracy']:.4f} |",
                    flush=True,
                )
            if len(scores) > 1:
                f1, accuracy = zip(*scores, strict=True)
                print(
                    f"| {group} | mean (sd) of {len(scores)} | | {statistics.mean(f1):.4f} "
                    f"({statistics.stdev(f1):.4f}) | {statistics.mean(accuracy):.4f} "
                    f"({statistics.stdev(accuracy):.4f}) |"
                )
            if args.ensemble:
                ensemble = headline_metrics(labels, np.mean(probabilities, axis=0))
                print(
                    f"| {group} | ensemble of {len(scores)} | | {ensemble['macro_f1']:.4f} "
                    f"| {ensemble['accuracy']:.4f} |"
                )


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
