"""Augmented copies of the training texts, for the teacher to label.

Soft labels on the training texts alone teach a student little that the hard labels do not: the
teacher has nearly memorised them. On texts it has not seen, its probabilities carry what it knows
(Tang et al., 2019; TinyBERT). A copy of each tweet changed in a way that keeps it a plausible finance
tweet is such a text, close to the data set's own distribution. One method makes every copy:

- `word_dropout`: each word dropped with probability `rate`.
- `span_deletion`: one run of consecutive words, `rate` of the tweet's words, deleted.
- `mask`: each word replaced by the mask token with probability `rate` (the teacher and the student
  each read their own tokenizer's mask token there: `distillation.MASK`).
- `swap`: each cashtag, company name and number replaced with probability `rate` by another: a
  cashtag of train, a name of `COMPANIES`, a number of the same shape (digits redrawn).
- `join`: the tweet's first words, then the last `rate` of the words of another train tweet of the
  same label.

Cashtags stay (except in `swap`): they say which company a tweet is about. At least one word is kept.
The methods are written here: augmentation libraries (nlpaug, TextAttack) bring models and word lists
to download, and none knows cashtags.
"""

import re
from collections.abc import Callable

import numpy as np
import pandas as pd

from finsent.config import AugmentParams
from finsent.distillation import MASK
from finsent.text import CASHTAG

COMPANIES = (
    "Apple", "Microsoft", "Amazon", "Alphabet", "Google", "Meta", "Facebook", "Tesla", "Nvidia",
    "Intel", "AMD", "Netflix", "Boeing", "Walmart", "Target", "Costco", "Disney", "Ford",
    "General Motors", "GM", "Exxon", "Chevron", "Pfizer", "Moderna", "JPMorgan", "Goldman Sachs",
    "Morgan Stanley", "Citigroup", "Wells Fargo", "Bank of America", "Visa", "Mastercard", "PayPal",
    "Uber", "Starbucks", "McDonald's", "Nike", "Oracle", "IBM", "Cisco", "Qualcomm", "Salesforce",
    "Adobe", "Coca-Cola", "PepsiCo", "Caterpillar", "3M", "AT&T", "Verizon", "Comcast",
)  # fmt: skip
"""Company names that `swap` exchanges for one another, where a tweet names one (whole words)."""

_COMPANY = re.compile(r"(?<![\w&'-])(?:" + "|".join(map(re.escape, COMPANIES)) + r")(?![\w&'-])")
# A number: digits with thousands separators or decimals (1,600 / 2.5 / 12); a sign or % is left around it.
_NUMBER = re.compile(r"(?<![\w.,-])\d+(?:[.,]\d+)*(?![\w-])")


def _keep_cashtags(words: list[str]) -> np.ndarray:
    return np.array([CASHTAG.fullmatch(word) is not None for word in words], dtype=bool)


def _at_least_one(keep: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if len(keep) and not keep.any():
        keep[rng.integers(len(keep))] = True
    return keep


def _kept(words: list[str], rate: float, rng: np.random.Generator) -> np.ndarray:
    """Which words stay as they are: each with probability 1 - `rate`, cashtags always, at least one."""
    return _at_least_one((rng.random(len(words)) >= rate) | _keep_cashtags(words), rng)


def drop_words(texts: list[str], rate: float, rng: np.random.Generator) -> list[str]:
    """Each text with every word (whitespace-separated) but cashtags dropped with probability `rate`.

    At least one word is kept. Words are joined by single spaces.
    """
    dropped = []
    for text in texts:
        words = text.split()
        keep = _kept(words, rate, rng)
        dropped.append(" ".join(word for word, kept in zip(words, keep, strict=True) if kept))
    return dropped


def delete_span(texts: list[str], rate: float, rng: np.random.Generator) -> list[str]:
    """Each text without one run of round(`rate` x its words) consecutive words (at least one word,
    cashtags kept), starting anywhere; a one-word text stays as it is."""
    deleted = []
    for text in texts:
        words = text.split()
        length = min(max(1, round(rate * len(words))), len(words) - 1)
        keep = np.ones(len(words), dtype=bool)
        if length > 0:
            start = rng.integers(len(words) - length + 1)
            keep[start : start + length] = False
        keep |= _keep_cashtags(words)
        deleted.append(" ".join(word for word, kept in zip(words, keep, strict=True) if kept))
    return deleted


def mask_words(texts: list[str], rate: float, rng: np.random.Generator) -> list[str]:
    """Each text with every word but cashtags replaced by MASK with probability `rate`; at least one
    word stays unmasked."""
    masked = []
    for text in texts:
        words = text.split()
        keep = _kept(words, rate, rng)
        masked.append(" ".join(word if kept else MASK for word, kept in zip(words, keep, strict=True)))
    return masked


def _redraw_digits(number: str, rng: np.random.Generator) -> str:
    """The same shape (separators where they were, as many digits), other digits; the first digit is
    not 0 where more digits or a thousands separator follow it before a decimal point."""
    redrawn = [str(rng.integers(0, 10)) if char.isdigit() else char for char in number]
    if len(number.split(".")[0]) > 1 and redrawn[0] == "0":
        redrawn[0] = str(rng.integers(1, 10))
    return "".join(redrawn)


def swap_entities(texts: list[str], rate: float, rng: np.random.Generator, cashtags: list[str]) -> list[str]:
    """Each text with every cashtag, company name (COMPANIES) and number replaced, with probability
    `rate`, by another: a cashtag drawn from `cashtags`, another name, the number's digits redrawn."""

    def replace(pattern: re.Pattern, draw: Callable[[str], str], text: str) -> str:
        return pattern.sub(lambda match: draw(match[0]) if rng.random() < rate else match[0], text)

    def other(choices, current: str) -> str:  # `choices` hold no duplicates
        if all(choice == current for choice in choices[:2]):
            return current
        while (choice := choices[rng.integers(len(choices))]) == current:
            pass
        return choice

    swapped = []
    for text in texts:
        text = replace(CASHTAG, lambda tag: other(cashtags, tag), text)
        text = replace(_COMPANY, lambda name: other(COMPANIES, name), text)
        swapped.append(replace(_NUMBER, lambda number: _redraw_digits(number, rng), text))
    return swapped


def join_halves(texts: list[str], labels: np.ndarray, rate: float, rng: np.random.Generator) -> list[str]:
    """Each text's first words, then the last `rate` of the words of another text of the same label
    (itself when it has none); the share of its own words kept is 1 - `rate`, at least one word."""
    joined = []
    for i, text in enumerate(texts):
        same = np.flatnonzero(labels == labels[i])
        same = same[same != i]
        partner = texts[same[rng.integers(len(same))]].split() if len(same) else text.split()
        words = text.split()
        head = words[: max(1, round((1 - rate) * len(words)))]
        tail = partner[len(partner) - round(rate * len(partner)) :] if partner else []
        joined.append(" ".join(head + tail))
    return joined


def augment(train: pd.DataFrame, params: AugmentParams, rng: np.random.Generator) -> list[str]:
    """One augmented copy of `train`'s texts, by `params.method`."""
    texts = train["text"].tolist()
    if params.method == "word_dropout":
        return drop_words(texts, params.rate, rng)
    if params.method == "span_deletion":
        return delete_span(texts, params.rate, rng)
    if params.method == "mask":
        return mask_words(texts, params.rate, rng)
    if params.method == "swap":
        cashtags = sorted({tag for text in texts for tag in CASHTAG.findall(text)})
        return swap_entities(texts, params.rate, rng, cashtags)
    return join_halves(texts, train["label"].to_numpy(), params.rate, rng)


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
                "text": augment(train, params, np.random.default_rng([params.seed, copy])),
            }
        )
        for copy in range(params.copies)
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["copy", "id", "text"])
