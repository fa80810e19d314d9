"""Augmented copies of the training texts, for the teacher to label: words dropped at random.

Soft labels on the training texts alone teach a student little that the hard labels do not: the
teacher has nearly memorised them. On texts it has not seen, its probabilities carry what it knows
(Tang et al., 2019; TinyBERT). A copy of each tweet with some of its words dropped is such a text,
close to the data set's own distribution. Cashtags stay: they say which company a tweet is about.
"""

import numpy as np
import pandas as pd

from finsent.config import AugmentParams
from finsent.text import CASHTAG


def drop_words(texts: list[str], rate: float, rng: np.random.Generator) -> list[str]:
    """Each text with every word (whitespace-separated) but cashtags dropped with probability `rate`.

    At least one word is kept. Words are joined by single spaces.
    """
    dropped = []
    for text in texts:
        words = text.split()
        keep = rng.random(len(words)) >= rate
        keep |= np.array([CASHTAG.fullmatch(word) is not None for word in words], dtype=bool)
        if words and not keep.any():
            keep[rng.integers(len(words))] = True
        dropped.append(" ".join(word for word, kept in zip(words, keep, strict=True) if kept))
    return dropped


def augmented_copies(train: pd.DataFrame, params: AugmentParams) -> pd.DataFrame:
    """`params.copies` copies of `train`'s texts, as `copy`, `id` (the source row's), `text` columns.

    Copy c draws from the seed sequence (params.seed, c): copy 0 is the same whatever the number of
    copies, so that a student using fewer copies than the teacher labelled sees the same texts.
    """
    frames = [
        pd.DataFrame(
            {
                "copy": copy,
                "id": train["id"].to_numpy(),
                "text": drop_words(
                    train["text"].tolist(),
                    params.word_dropout,
                    np.random.default_rng([params.seed, copy]),
                ),
            }
        )
        for copy in range(params.copies)
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["copy", "id", "text"])
