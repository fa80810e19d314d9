"""Stage tokenize: train and dev splits normalised and turned into token ids; the tokenizer saved beside them.

With distillation on, each train row also carries the teacher's logits, and the teacher's augmented
copies of train follow as rows of their own, without a label. With `tokenize.drop_doubtful`, the train
rows the audit stage doubts are left out, with their augmented copies.
(Not named tokenize.py: as the first entry of sys.path it would shadow the standard library's module.)
"""

import argparse
from pathlib import Path

from datasets import disable_progress_bars

from finsent.atomic import atomic_dir
from finsent.audit_files import drop_doubtful
from finsent.cli import run_cli
from finsent.config import load_params
from finsent.data import read_jsonl
from finsent.distillation import distillation_rows
from finsent.pretrained import resolve_pretrained
from finsent.tokenization import load_fast_tokenizer, text_normalization, tokenize_frame, write_tokenized


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw_dir", type=Path)
    parser.add_argument("teacher_dir", type=Path, help="the teacher stage's logits (read if distilling)")
    parser.add_argument(
        "audit_file", type=Path, help="the audit's doubtful train rows (read if dropping them)"
    )
    parser.add_argument("out_dir", type=Path, help="folder for {train,dev}.parquet and tokenizer/")
    args = parser.parse_args()
    disable_progress_bars()
    params = load_params()
    checkpoint_dir = resolve_pretrained(params.model.checkpoint, params.model.revision)
    tokenizer = load_fast_tokenizer(checkpoint_dir, params.tokenize.max_length)
    normalize = text_normalization(params.tokenize)
    raw_train = read_jsonl(args.raw_dir / "train.jsonl")
    train, teacher_logits = raw_train, None
    if params.distill.enabled:
        train, teacher_logits = distillation_rows(
            raw_train, args.teacher_dir, params.distill, tokenizer.mask_token
        )
    if params.tokenize.drop_doubtful:
        rows = len(train)
        train, teacher_logits = drop_doubtful(train, teacher_logits, args.audit_file, raw_train["id"])
        print(f"left out: {rows - len(train):,} rows the audit doubts ({args.audit_file}), copies included")
    splits = {
        "train": tokenize_frame(train, tokenizer, normalize, teacher_logits),
        "dev": tokenize_frame(read_jsonl(args.raw_dir / "dev.jsonl"), tokenizer, normalize),
    }
    with atomic_dir(args.out_dir) as staging:
        write_tokenized(splits, tokenizer, normalize, staging)
    print("rows:", ", ".join(f"{split} {len(data):,}" for split, data in splits.items()))


if __name__ == "__main__":
    run_cli(main)
