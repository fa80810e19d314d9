"""Stage tokenize: train and dev splits normalised and turned into token ids; the tokenizer saved beside them.

(Not named tokenize.py: as the first entry of sys.path it would shadow the standard library's module.)
"""

import argparse
from pathlib import Path

from datasets import disable_progress_bars

from finsent.atomic import atomic_dir
from finsent.cli import run_cli
from finsent.config import load_params
from finsent.data import read_jsonl
from finsent.pretrained import resolve_checkpoint
from finsent.text import TextNormalization
from finsent.tokenization import load_fast_tokenizer, tokenize_frame, write_tokenized


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw_dir", type=Path)
    parser.add_argument("out_dir", type=Path, help="folder for {train,dev}.parquet and tokenizer/")
    args = parser.parse_args()
    disable_progress_bars()
    params = load_params()
    checkpoint_dir = resolve_checkpoint(params.model.checkpoint, params.model.revision)
    tokenizer = load_fast_tokenizer(checkpoint_dir, params.tokenize.max_length)
    normalize = TextNormalization(
        url_replacement=params.tokenize.url_replacement,
        cashtag_replacement=params.tokenize.cashtag_replacement,
    )
    splits = {
        split: tokenize_frame(read_jsonl(args.raw_dir / f"{split}.jsonl"), tokenizer, normalize)
        for split in ("train", "dev")
    }
    with atomic_dir(args.out_dir) as staging:
        write_tokenized(splits, tokenizer, normalize, staging)
    print("rows:", ", ".join(f"{split} {len(data):,}" for split, data in splits.items()))


if __name__ == "__main__":
    run_cli(main)
