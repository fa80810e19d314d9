"""Stage train: LoRA fine-tuning on train, checkpoint chosen by dev macro-F1, dvclive logs per epoch."""

import argparse
import json
from pathlib import Path

from dvclive import Live

from finsent.atomic import atomic_dir
from finsent.config import load_params
from finsent.errors import run_cli
from finsent.training import train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("tokenized_dir", type=Path)
    parser.add_argument("model_dir", type=Path, help="folder for the adapter, head, base and tokenizer")
    parser.add_argument("live_dir", type=Path, help="dvclive folder: params, per-epoch metrics, summary")
    args = parser.parse_args()
    params = load_params()
    with (
        atomic_dir(args.model_dir) as model_staging,
        atomic_dir(args.live_dir) as live_staging,
        Live(str(live_staging), dvcyaml=None, save_dvc_exp=False) as live,
    ):
        live.log_params(params.model_dump(include={"model", "tokenize", "lora", "train"}))
        summary = train_classifier(params, args.tokenized_dir, model_staging, live)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    run_cli(main)
