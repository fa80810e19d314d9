"""Stage audit: the rows of train and validation whose label the data itself doubts (confident learning).

Out-of-fold class probabilities of every train row (K-fold training on the labels alone), validation's
from the mean of the fold models; cleanlab then finds the doubtful rows. Writes the doubtful rows of each
split (`finsent.audit_files`) and train's noise matrix as plot data into one folder, the figures into a
metrics file. Costly, and rerun on purpose (`make audit`): its outputs are in git, like the teacher's,
with the hash of the code that made them (`code_sha256`).
"""

import argparse
import json
import time
from pathlib import Path

from datasets import disable_progress_bars

from finsent.atomic import atomic_dir, atomic_file
from finsent.audit import audit_split, noise_table, out_of_fold_probabilities
from finsent.audit_files import DOUBTFUL_FILES, NOISE_FILE, audit_code_sha256, write_doubtful
from finsent.cli import run_cli
from finsent.config import load_params
from finsent.data import read_jsonl
from finsent.distillation import CODE_KEY

PROJECT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw_dir", type=Path, help="folder of train.jsonl, dev.jsonl, validation.jsonl")
    parser.add_argument("out_dir", type=Path, help="folder for the doubtful rows and the noise matrix")
    parser.add_argument("metrics_file", type=Path)
    args = parser.parse_args()
    code = audit_code_sha256(PROJECT)  # the code imported now, whatever is edited while it trains
    disable_progress_bars()
    params = load_params().audit
    splits = {split: read_jsonl(args.raw_dir / f"{split}.jsonl") for split in ("train", "dev", "validation")}
    started = time.monotonic()
    train, validation = out_of_fold_probabilities(
        splits["train"], splits["dev"], splits["validation"], params
    )
    probabilities = {"train": train, "validation": validation}
    audits = {split: audit_split(split, splits[split], probabilities[split]) for split in DOUBTFUL_FILES}
    metrics = {split: figures for split, (_, figures) in audits.items()} | {CODE_KEY: code}
    with atomic_dir(args.out_dir) as staging, atomic_file(args.metrics_file) as metrics_staging:
        for split, file_name in DOUBTFUL_FILES.items():
            write_doubtful(staging / file_name, audits[split][0])
        noise_table(metrics["train"]).to_csv(staging / NOISE_FILE, index=False)
        metrics_staging.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(f"audit: done in {(time.monotonic() - started) / 60:.1f} min")
    print(json.dumps({split: {k: metrics[split][k] for k in ("rows", "doubtful")} for split in audits}))


if __name__ == "__main__":
    run_cli(main)
