"""Stage export: the trained model as ONNX, LoRA merged, fp32 and int8, checked against PyTorch's
probabilities on validation (the evaluate stage's)."""

import argparse
import json
from pathlib import Path

from finsent.atomic import atomic_dir, atomic_file
from finsent.cli import run_cli
from finsent.config import load_params
from finsent.data import read_jsonl
from finsent.export import export_classifier, reference_probabilities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument(
        "predictions_file", type=Path, help="the evaluate stage's predictions on validation: the reference"
    )
    parser.add_argument("validation_file", type=Path, help="JSONL split to compare the runtimes on")
    parser.add_argument("dev_file", type=Path, help="JSONL split to compare them on for tuning")
    parser.add_argument(
        "calibration_file", type=Path, help="JSONL split to calibrate int8 on (smoothing, activation ranges)"
    )
    parser.add_argument("exported_dir", type=Path, help="folder for the ONNX models and the tokenizer")
    parser.add_argument("metrics_file", type=Path)
    args = parser.parse_args()
    params = load_params()
    validation = read_jsonl(args.validation_file)
    expected = reference_probabilities(args.predictions_file, validation)
    dev_texts = read_jsonl(args.dev_file)["text"].tolist()
    calibration_texts = read_jsonl(args.calibration_file)["text"].tolist()
    with atomic_dir(args.exported_dir) as staging, atomic_file(args.metrics_file) as metrics_staging:
        metrics = export_classifier(
            args.model_dir,
            staging,
            validation,
            expected,
            dev_texts,
            calibration_texts,
            params.export,
        )
        metrics_staging.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    run_cli(main)
