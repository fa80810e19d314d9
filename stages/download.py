"""Stage download: the data set, checked against its pinned fingerprint, split into train/dev/validation."""

import argparse
from pathlib import Path

from finsent.atomic import atomic_dir
from finsent.cli import run_cli
from finsent.config import load_params
from finsent.data import prepare_raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path, help="folder for train.jsonl, dev.jsonl, validation.jsonl")
    args = parser.parse_args()
    params = load_params()
    with atomic_dir(args.out_dir) as staging:
        rows = prepare_raw(params.data, staging)
    print("rows:", ", ".join(f"{split} {count:,}" for split, count in rows.items()))


if __name__ == "__main__":
    run_cli(main)
