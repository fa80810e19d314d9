"""The label audit: which labels of train and validation the data itself doubts (confident learning).

Confident learning (Northcutt et al., 2021; cleanlab) needs each row's class probabilities from a model
that never saw it. Train: K-fold training (`out_of_fold_probabilities`), each fold's rows scored by the
model trained on the others, on the labels alone (the teacher saw every train row: its logits would give
a row's label back). Validation: the mean of the K fold models' probabilities, out of sample for all of
them; not the served model's, which would then choose the labels it is scored on (docs/experiments.md,
"Decisions"). `audit_split` turns a split's probabilities into its doubtful rows and figures.
"""

import gc
import sys

import numpy as np
import pandas as pd
from cleanlab.count import estimate_joint
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from scipy.special import softmax
from sklearn.model_selection import StratifiedKFold

from finsent.config import LABELS, AuditParams
from finsent.errors import FinsentError
from finsent.metrics import headline_metrics
from finsent.pretrained import resolve_pretrained
from finsent.tokenization import load_fast_tokenizer, text_normalization, tokenize_frame
from finsent.training import predict_logits, train_classifier

_DECIMALS = 4  # quality scores and shares: enough to rank and read, and the files stay small


def fold_of_each_row(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0 to `folds` - 1) of each row: stratified, so each fold holds every class in its share."""
    counts = np.bincount(labels, minlength=len(LABELS))
    rarest = int(counts.argmin())
    if counts[rarest] < folds:
        raise FinsentError(
            f"audit.folds: {folds}, but train has {counts[rarest]} {LABELS[rarest]} rows: each fold "
            f"needs one of every class"
        )
    fold = np.empty(len(labels), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for index, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        fold[held_out] = index
    return fold


def out_of_fold_probabilities(
    train: pd.DataFrame, dev: pd.DataFrame, validation: pd.DataFrame, params: AuditParams
) -> tuple[np.ndarray, np.ndarray]:
    """Each train row's class probabilities from the fold model that did not train on it, and each
    validation row's mean over the fold models; shapes (rows, len(LABELS)).

    Each fold model trains on the other folds' labels alone with the project's `train_classifier`, its
    epoch chosen on dev (in no fold).
    """
    checkpoint_dir = resolve_pretrained(params.checkpoint, params.revision, key="audit.checkpoint")
    tokenizer = load_fast_tokenizer(checkpoint_dir, params.tokenize.max_length)
    normalize = text_normalization(params.tokenize)
    tokenized = {
        name: tokenize_frame(frame, tokenizer, normalize)
        for name, frame in (("train", train), ("dev", dev), ("validation", validation))
    }
    fold = fold_of_each_row(train["label"].to_numpy(), params.folds, params.fold_seed)
    train_probabilities = np.zeros((len(train), len(LABELS)))
    validation_probabilities = np.zeros((len(validation), len(LABELS)))
    for index in range(params.folds):
        held_out = np.flatnonzero(fold == index)
        print(
            f"audit: fold {index + 1}/{params.folds}: training on {len(train) - len(held_out):,} rows, "
            f"then scoring its {len(held_out):,} held-out rows and validation",
            file=sys.stderr,
            flush=True,
        )
        trainer, _ = train_classifier(
            checkpoint_dir,
            params.lora,
            params.train,
            tokenized["train"].select(np.flatnonzero(fold != index)),
            tokenized["dev"],
            tokenizer,
        )
        held_out_logits = predict_logits(
            trainer, tokenized["train"].select(held_out), params.label_batch_size
        )
        train_probabilities[held_out] = softmax(held_out_logits, axis=1)
        validation_logits = predict_logits(trainer, tokenized["validation"], params.label_batch_size)
        validation_probabilities += softmax(validation_logits, axis=1) / params.folds
        del trainer
        gc.collect()  # one fold's model at a time in memory
    return train_probabilities, validation_probabilities


def audit_split(split: str, frame: pd.DataFrame, probabilities: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """A split's doubtful rows (`finsent.audit_files.DOUBTFUL_COLUMNS`, the lowest quality first) and
    its figures: rows and doubtful rows in all and by given label, the estimated noise matrix, and the
    probabilities' own scores against the given labels.

    Doubtful: cleanlab's `find_label_issues` (pruned by the noise rates that confident learning
    estimates). Quality: `get_label_quality_scores` (self-confidence, the given label's probability).
    Noise matrix: P(given label | true label), from cleanlab's `estimate_joint` P(given, true).
    """
    labels = frame["label"].to_numpy()
    absent = [name for label, name in enumerate(LABELS) if not (labels == label).any()]
    if absent:
        raise FinsentError(f"{split} split: no {', '.join(absent)} row (the audit needs rows of every class)")
    ranked = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(labels, probabilities, method="self_confidence")
    names = np.array(LABELS)
    doubtful = pd.DataFrame(
        {
            "id": frame["id"].to_numpy()[ranked],
            "text": frame["text"].to_numpy()[ranked],
            "label": names[labels[ranked]],
            "suggested": names[probabilities[ranked].argmax(axis=1)],
            "quality": quality[ranked].round(_DECIMALS),
        }
    )
    joint = estimate_joint(labels, probabilities)  # (given, true), sums to 1
    true_share = joint.sum(axis=0, keepdims=True)  # a class no row is estimated to be: a column of 0
    noise = np.divide(joint, true_share, out=np.zeros_like(joint), where=true_share > 0)
    flagged = np.zeros(len(labels), dtype=bool)
    flagged[ranked] = True
    by_label = {
        name: {
            "rows": int((labels == label).sum()),
            "doubtful": int(flagged[labels == label].sum()),
            "doubtful_share": round(float(flagged[labels == label].mean()), _DECIMALS),
        }
        for label, name in enumerate(LABELS)
    }
    scores = headline_metrics(labels, probabilities)
    figures = {
        "rows": len(labels),
        "doubtful": int(flagged.sum()),
        "doubtful_share": round(float(flagged.mean()), _DECIMALS),
        "by_label": by_label,
        # noise_matrix[true][given]: the share of the rows truly of class `true` that carry label `given`.
        "noise_matrix": {
            true: {given: round(float(noise[g, t]), _DECIMALS) for g, given in enumerate(LABELS)}
            for t, true in enumerate(LABELS)
        },
        # estimated_rows[true][given]: the joint times the rows, the number of rows in each cell.
        "estimated_rows": {
            true: {given: round(float(joint[g, t]) * len(labels)) for g, given in enumerate(LABELS)}
            for t, true in enumerate(LABELS)
        },
        "model": {name: round(scores[name], _DECIMALS) for name in ("macro_f1", "accuracy")},
    }
    return doubtful, figures


def noise_table(figures: dict) -> pd.DataFrame:
    """The noise matrix of `audit_split`'s figures as plot data: a row a (true, given) pair of labels,
    with its share of the true class and the estimated number of rows."""
    return pd.DataFrame(
        [
            {
                "true_label": true,
                "given_label": given,
                "share": share,
                "rows": figures["estimated_rows"][true][given],
            }
            for true, shares in figures["noise_matrix"].items()
            for given, share in shares.items()
        ]
    )
