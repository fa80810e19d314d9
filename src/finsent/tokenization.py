"""Model inputs: texts normalised, then turned into token ids by the checkpoint's fast tokenizer, unpadded."""

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from finsent.text import TextNormalization, save_text_processing

TOKENIZER_SUBDIR = "tokenizer"


def load_fast_tokenizer(checkpoint_dir: Path, max_length: int) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, truncating at `max_length` wherever it is used after this."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir, use_fast=True)
    tokenizer.model_max_length = max_length
    return tokenizer


def tokenize_frame(
    frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, normalize: TextNormalization
) -> Dataset:
    """Token ids and labels of a split; padding is left to each batch (dynamic padding)."""
    encoded = tokenizer(normalize(frame["text"].tolist()), truncation=True)
    return Dataset.from_dict({**encoded, "label": frame["label"].tolist()})


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
