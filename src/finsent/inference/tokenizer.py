"""Texts to model inputs at inference: the exported `tokenizer.json` through the `tokenizers` library.

The pipeline tokenizes through transformers, whose fast tokenizers are this same `tokenizers` model;
reading the file directly gives the same token ids (tests/test_tokenizer.py checks every text of the
data set) without importing transformers and torch, a second or more of start-up and most of a
serving install.
"""

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from finsent.errors import FinsentError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


class TextEncoder:
    """Token ids, attention mask (and token type ids) of a batch of texts, padded to its longest,
    truncated to the model's `model_max_length`, as transformers' tokenizer would give them."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        config_file, tokenizer_file = folder / TOKENIZER_CONFIG, folder / TOKENIZER_FILE
        for file in (config_file, tokenizer_file):
            if not file.is_file():
                raise FinsentError(
                    f"{file}: missing; every model folder has the tokenizer it was trained with"
                )
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
            max_length, pad_token = int(config["model_max_length"]), str(config["pad_token"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
            raise FinsentError(f"{config_file}: not the tokenizer configuration the pipeline saves") from None
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as error:  # tokenizers raises a bare Exception for a file it cannot read
            raise FinsentError(f"{tokenizer_file}: not a tokenizer file ({error})") from None
        pad_id = self.tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise FinsentError(
                f"{folder / TOKENIZER_CONFIG}: its pad token {pad_token!r} is not in the vocabulary"
            )
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Arrays of shape (len(texts), longest), int64, by the names ONNX models take them."""
        encodings = self.tokenizer.encode_batch(texts)
        return {
            "input_ids": np.array([encoding.ids for encoding in encodings], dtype=np.int64),
            "attention_mask": np.array([encoding.attention_mask for encoding in encodings], dtype=np.int64),
            "token_type_ids": np.array([encoding.type_ids for encoding in encodings], dtype=np.int64),
        }
