"""Stage teacher: a stronger model fine-tuned on train (epoch chosen on dev), then its logits for train,
dev and augmented copies of train, for the train stage to distil; its metrics on dev and validation.
With `teacher.runs` above 1, as many runs (seeds train.seed, train.seed + 1, ...) whose class
probabilities, averaged, are the soft labels (written as their logarithms, which softmax turns back).

Its weights are not kept: all that the pipeline needs from it is the logits, which are small and in git.
Its metrics record the hash of the code it ran (`code_sha256`): its deps leave out the shared modules,
and `finsent-results` says when they have changed since.
"""

import argparse
import gc
import json
from pathlib import Path

from datasets import disable_progress_bars
from scipy.special import softmax

from finsent.atomic import atomic_dir, atomic_file
from finsent.augmentation import augmented_copies
from finsent.cli import run_cli
from finsent.config import load_params
from finsent.data import read_jsonl
from finsent.distillation import (
    AUGMENTED_FILE,
    CODE_KEY,
    SPLIT_FILES,
    ensemble_logits,
    teacher_code_sha256,
    with_mask_token,
    write_logits,
)
from finsent.errors import FinsentError
from finsent.metrics import headline_metrics
from finsent.pretrained import resolve_pretrained
from finsent.tokenization import load_fast_tokenizer, text_normalization, tokenize_frame
from finsent.training import predict_logits, train_classifier

LABELLED = ("train", "dev", "validation", "augmented")
"""What each teacher run labels: the splits and the augmented copies of train."""

DEV_TOLERANCE = 0.005
"""How far the written logits' dev scores may be from training's own evaluation of the same model: a
tweet or two whose label flips with the batch's padding, where logits out of row order score far off."""


def check_reproduces_dev(recomputed: dict, evaluated: dict) -> None:
    """The logits written must give the dev scores that Trainer's own evaluation gave the chosen epoch:
    else they are not the rows' logits, or not this model's, and nothing is written."""
    if any(abs(recomputed[name] - evaluated[name]) > DEV_TOLERANCE for name in ("macro_f1", "accuracy")):
        raise FinsentError(
            f"teacher: its logits score dev macro-F1 {recomputed['macro_f1']:.4f}, where training "
            f"evaluated the same model at {evaluated['macro_f1']:.4f}: they are not in row order"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw_dir", type=Path, help="folder of train.jsonl, dev.jsonl, validation.jsonl")
    parser.add_argument("out_dir", type=Path, help="folder for the logits: train, dev and augmented CSV")
    parser.add_argument("metrics_file", type=Path)
    args = parser.parse_args()
    code = teacher_code_sha256()  # the code imported now, whatever is edited while it trains
    disable_progress_bars()
    params = load_params()
    teacher = params.teacher
    splits = {split: read_jsonl(args.raw_dir / f"{split}.jsonl") for split in ("train", "dev", "validation")}
    augmented = augmented_copies(splits["train"], teacher.augment)
    checkpoint_dir = resolve_pretrained(teacher.checkpoint, teacher.revision, key="teacher.checkpoint")
    tokenizer = load_fast_tokenizer(checkpoint_dir, teacher.tokenize.max_length)
    normalize = text_normalization(teacher.tokenize)
    tokenized = {split: tokenize_frame(frame, tokenizer, normalize) for split, frame in splits.items()}
    tokenized["augmented"] = tokenize_frame(
        with_mask_token(augmented, tokenizer.mask_token), tokenizer, normalize
    )
    labels = {split: splits[split]["label"].to_numpy() for split in ("dev", "validation")}
    with atomic_dir(args.out_dir) as staging, atomic_file(args.metrics_file) as metrics_staging:
        runs = []
        for run in range(teacher.runs):
            train = teacher.train.model_copy(update={"seed": teacher.train.seed + run})
            trainer, summary = train_classifier(
                checkpoint_dir, teacher.lora, train, tokenized["train"], tokenized["dev"], tokenizer
            )
            logits = {
                name: predict_logits(trainer, tokenized[name], teacher.label_batch_size) for name in LABELLED
            }
            check_reproduces_dev(
                headline_metrics(labels["dev"], softmax(logits["dev"], axis=1)), summary["dev"]
            )
            runs.append((train.seed, logits, summary))
            del trainer
            gc.collect()  # one run's model at a time in memory
        logits = {name: ensemble_logits([run_logits[name] for _, run_logits, _ in runs]) for name in LABELLED}
        for split, file_name in SPLIT_FILES.items():
            write_logits(staging / file_name, splits[split][["id"]], logits[split])
        write_logits(staging / AUGMENTED_FILE, augmented, logits["augmented"])
        metrics = {split: headline_metrics(labels[split], softmax(logits[split], axis=1)) for split in labels}
        metrics[CODE_KEY] = code
        if len(runs) == 1:
            metrics |= {"best_epoch": runs[0][2]["best_epoch"], "train": runs[0][2]["train"]}
        else:
            metrics["runs"] = {  # each run alone, beside the ensemble: what averaging adds
                f"seed_{seed}": summary
                | {
                    "validation": headline_metrics(
                        labels["validation"], softmax(run_logits["validation"], axis=1)
                    )
                }
                for seed, run_logits, summary in runs
            }
        metrics_staging.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({split: metrics[split] for split in ("dev", "validation")}, indent=2))


if __name__ == "__main__":
    run_cli(main)
