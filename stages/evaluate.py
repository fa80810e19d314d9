"""Stage evaluate: the trained model on the held-out validation split, read once, for the report; and
on the behavioural test cases. Validation is also scored on the labels the audit trusts (its doubtful
rows left out, `trusted_labels`): how much of the remaining error is the labels'; reported, never
used to choose."""

import argparse
import json
from pathlib import Path

from finsent.atomic import atomic_dir, atomic_file
from finsent.audit_files import doubtful_mask, trusted_label_metrics
from finsent.behaviour import load_cases, score_cases
from finsent.cli import run_cli
from finsent.config import load_params
from finsent.data import read_jsonl
from finsent.inference.predictors import TorchPredictor
from finsent.metrics import (
    classification_metrics,
    precision_recall_curves,
    predictions_table,
    reliability_bins,
)
from finsent.plot_data import precision_recall_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("split_file", type=Path, help="JSONL split to evaluate on")
    parser.add_argument("audit_file", type=Path, help="the audit's doubtful rows of that split")
    parser.add_argument("cases_file", type=Path, help="YAML file of behavioural test cases")
    parser.add_argument("metrics_file", type=Path)
    parser.add_argument("plots_dir", type=Path, help="folder for predictions, plot data and failed cases")
    args = parser.parse_args()
    params = load_params()
    cases = load_cases(args.cases_file)  # before the model loads: a wrong case stops the stage at once
    predictor = TorchPredictor.from_dir(args.model_dir, params.evaluate.batch_size)
    split = read_jsonl(args.split_file)
    doubtful = doubtful_mask(args.audit_file, "validation", split["id"])
    labels = split["label"].to_numpy()
    probabilities = predictor.predict_proba(split["text"].tolist())
    metrics = classification_metrics(labels, probabilities)
    metrics["trusted_labels"] = trusted_label_metrics(labels, probabilities, doubtful)
    metrics["behaviour"], failures = score_cases(cases, predictor)
    with atomic_dir(args.plots_dir) as staging, atomic_file(args.metrics_file) as metrics_staging:
        predictions_table(split["id"], labels, probabilities).to_csv(staging / "predictions.csv", index=False)
        curves = precision_recall_curves(labels, probabilities)
        precision_recall_table(curves, metrics["per_class"]).to_csv(
            staging / "precision_recall.csv", index=False
        )
        reliability_bins(labels, probabilities).round(5).to_csv(staging / "reliability.csv", index=False)
        failures.to_csv(staging / "behaviour_failures.csv", index=False)
        metrics_staging.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    headline = ("macro_f1", "accuracy", "expected_calibration_error", "trusted_labels", "behaviour")
    print(json.dumps({key: metrics[key] for key in headline}, indent=2))


if __name__ == "__main__":
    run_cli(main)
