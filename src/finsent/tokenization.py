"""Model inputs: texts normalised, then turned into token ids by the checkpoint's fast tokenizer, unpadded."""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from finsent.config import TokenizeParams
from finsent.text import TextNormalization, save_text_processing

TOKENIZER_SUBDIR = "tokenizer"

TEACHER_LOGITS = "teacher_logits"
"""Column of a training set with the teacher's logits of each row, shape (len(LABELS),)."""

NO_LABEL = -100
"""The label of a row that only the teacher labels (an augmented copy): cross-entropy skips it."""


def load_fast_tokenizer(checkpoint_dir: Path, max_length: int) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, truncating at `max_length` wherever it is used after this."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir, use_fast=True)
    tokenizer.model_max_length = max_length
    return tokenizer


def text_normalization(params: TokenizeParams) -> TextNormalization:
    return TextNormalization(
        url_replacement=params.url_replacement, cashtag_replacement=params.cashtag_replacement
    )


def tokenize_frame(
    frame: pd.DataFrame,
    tokenizer: PreTrainedTokenizerBase,
    normalize: TextNormalization,
    teacher_logits: np.ndarray | None = None,
) -> Dataset:
    """Token ids of a split's texts, and their labels if it has a `label` column (None: NO_LABEL).

    Padding is left to each batch (dynamic padding). With `teacher_logits`, one row a text, they are
    the TEACHER_LOGITS column, for distillation.
    """
    columns = dict(tokenizer(normalize(frame["text"].tolist()), truncation=True))
    if "label" in frame.columns:
        columns["label"] = [NO_LABEL if label is None else int(label) for label in frame["label"]]
    if teacher_logits is not None:
        columns[TEACHER_LOGITS] = np.asarray(teacher_logits, dtype=np.float32).tolist()
    return Dataset.from_dict(columns)


def write_tokenized(
    splits: dict[str, Dataset],
    tokenizer: PreTrainedTokenizerBase,
    normalize: TextNormalization,
    out_dir: Path,
) -> None:
    for split, dataset in splits.items():
        dataset.to_parquet(out_dir / f"{split}.parquet")
    save_text_processing(out_dir / TOKENIZER_SUBDIR, tokenizer, normalize)


def read_tokenized(in_dir: Path, split: str) -> Dataset:
    return Dataset(pq.read_table(in_dir / f"{split}.parquet"))
