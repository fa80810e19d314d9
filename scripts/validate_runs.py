"""Validation metrics of runs already trained, without training them again, and their spread.

    python scripts/validate_runs.py REV [REV ...]

For each run (an experiment name or a commit, as `dvc exp list` shows them): its `models/` from the
DVC cache, scored by the evaluate stage's own script on `data/raw/validation.jsonl`. Prints a
Markdown row a run, then the mean and sample standard deviation of macro-F1 and accuracy.

What it is for: the other seeds of the committed params (issue 5 asks for three) run up to `train`
as experiments; validation is read here, once, for those runs alone.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ruamel.yaml import YAML

PROJECT = Path(__file__).resolve().parents[1]


def dvc_get(path: str, rev: str, out: Path) -> Path:
    subprocess.run(["dvc", "get", ".", path, "--rev", rev, "-o", str(out)], cwd=PROJECT, check=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("revs", nargs="+", metavar="REV")
    args = parser.parse_args()
    print("| run | seed | validation macro-F1 | accuracy |\n|---|---|---|---|")
    scores = []
    with tempfile.TemporaryDirectory() as work:
        for index, rev in enumerate(args.revs):
            folder = Path(work) / str(index)
            models = dvc_get("models", rev, folder / "models")
            recorded = dvc_get("metrics/train/params.yaml", rev, folder / "params.yaml")
            stage = [sys.executable, "stages/evaluate.py", str(models), "data/raw/validation.jsonl"]
            stage += [str(folder / "validation.json"), str(folder / "plots")]
            env = os.environ | {"PYTHONPATH": "src"}
            subprocess.run(stage, cwd=PROJECT, env=env, stdout=subprocess.DEVNULL, check=True)
            metrics = json.loads((folder / "validation.json").read_text())
            seed = YAML(typ="safe").load(recorded.read_text())["train"]["seed"]
            scores.append((metrics["macro_f1"], metrics["accuracy"]))
            print(f"| {rev} | {seed} | {metrics['macro_f1']:.4f} | {metrics['accuracy']:.4f} |", flush=True)
    if len(scores) > 1:
        f1, accuracy = zip(*scores, strict=True)
        print(
            f"| mean (sd) | | {statistics.mean(f1):.4f} ({statistics.stdev(f1):.4f}) "
            f"| {statistics.mean(accuracy):.4f} ({statistics.stdev(accuracy):.4f}) |"
        )


if __name__ == "__main__":
    main()
