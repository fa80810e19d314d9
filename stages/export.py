"""Stage export: the trained model as ONNX, LoRA merged, fp32 and int8, checked against PyTorch."""

import argparse
import json
from pathlib import Path

from finsent.atomic import atomic_dir, atomic_file
from finsent.config import load_params
from finsent.data import read_jsonl
from finsent.errors import run_cli
from finsent.export import export_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("split_file", type=Path, help="JSONL split to compare the runtimes on")
    parser.add_argument("exported_dir", type=Path, help="folder for the ONNX models and the tokenizer")
    parser.add_argument("metrics_file", type=Path)
    args = parser.parse_args()
    params = load_params()
    split = read_jsonl(args.split_file)
    with atomic_dir(args.exported_dir) as staging, atomic_file(args.metrics_file) as metrics_staging:
        metrics = export_classifier(
            args.model_dir, staging, split["text"].tolist(), split["label"].to_numpy(), params.export
        )
        metrics_staging.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    run_cli(main)
