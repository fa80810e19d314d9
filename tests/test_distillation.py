"""Distillation: the augmented copies, the teacher's files and their checks, the loss."""

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import PROJECT

from finsent.augmentation import (
    COMPANIES,
    augmented_copies,
    delete_span,
    drop_words,
    join_halves,
    mask_words,
    swap_entities,
)
from finsent.config import AugmentParams, DistillParams, load_params
from finsent.data import SOURCE_FILES, read_source_csv, split_dev
from finsent.distillation import (
    AUGMENTED_FILE,
    LOGIT_COLUMNS,
    MASK,
    distillation_rows,
    ensemble_logits,
    write_logits,
)
from finsent.errors import FinsentError
from finsent.tokenization import NO_LABEL
from finsent.training import classification_loss, distillation_loss

TRAIN = pd.DataFrame(
    {
        "id": [3, 5, 8],
        "text": ["$AAPL beats estimates by a wide margin", "Fed holds rates", "$TSLA falls hard today"],
        "label": [1, 2, 0],
    }
)
DISTILL = DistillParams(enabled=True, alpha=0.5, temperature=2.0, augmented_copies=1)


def test_word_dropout_keeps_cashtags_and_at_least_one_word():
    rng = np.random.default_rng(0)
    dropped = drop_words(["$AAPL beats estimates", "one", "a b c d e f g h"], 0.999, rng)
    assert dropped[0] == "$AAPL"
    assert dropped[1] == "one"
    assert len(dropped[2].split()) == 1
    assert drop_words(["a b c"], 1e-9, rng) == ["a b c"]


def test_span_deletion_deletes_one_run_of_words_and_keeps_cashtags():
    rng = np.random.default_rng(0)
    words = ["w0", "w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8", "w9"]
    for text in delete_span([" ".join(words)] * 20, 0.3, rng):
        kept = text.split()
        start = next(i for i, word in enumerate(words) if word not in kept)
        assert kept == words[:start] + words[start + 3 :]  # 3 consecutive words gone, the rest in order
    assert delete_span(["one"], 0.9, rng) == ["one"]
    assert {*delete_span(["$AAPL $TSLA up"] * 20, 0.9, rng)} == {"$AAPL $TSLA", "$AAPL $TSLA up"}


def test_masking_replaces_words_with_the_mask_and_keeps_one_word():
    rng = np.random.default_rng(0)
    masked = mask_words(["$AAPL beats estimates by a mile"] * 50, 0.5, rng)
    assert all(text.split()[0] == "$AAPL" and len(text.split()) == 6 for text in masked)
    assert {word for text in masked for word in text.split()[1:]} == {
        *["beats", "estimates", "by", "a", "mile"],
        MASK,
    }
    assert mask_words(["a b c"], 0.999, rng)[0].split().count(MASK) == 2


def test_swap_replaces_cashtags_names_and_numbers_by_others_of_their_kind():
    rng = np.random.default_rng(0)
    text = "$AAPL up 12.5% as Apple tops $1,600; Q3 10-K filed"
    swapped = swap_entities([text] * 30, 0.999, rng, ["$AAPL", "$TSLA", "$XOM"])
    pattern = r"(\$TSLA|\$XOM) up [1-9]\d\.\d% as (?P<name>.+) tops \$[1-9],\d{3}; Q3 10-K filed"
    for result in swapped:
        match = re.fullmatch(pattern, result)
        assert match, result
        assert match["name"] in COMPANIES and match["name"] != "Apple"
    assert len(set(swapped)) > 20
    assert swap_entities([text], 1e-9, rng, ["$AAPL", "$TSLA"]) == [text]
    assert swap_entities(["Applebee's and Pineapple"], 0.999, rng, ["$A"]) == ["Applebee's and Pineapple"]


def test_join_takes_the_end_of_a_tweet_of_the_same_label():
    texts = ["a1 a2 a3 a4", "b1 b2 b3 b4", "c1 c2 c3 c4", "alone here"]
    joined = join_halves(texts, np.array([0, 1, 0, 2]), 0.5, np.random.default_rng(0))
    assert joined == ["a1 a2 c3 c4", "b1 b2 b3 b4", "c1 c2 a3 a4", "alone here"]


@pytest.mark.parametrize("method", ["word_dropout", "span_deletion", "mask", "swap", "join"])
def test_copies_are_seeded_and_copy_zero_does_not_depend_on_the_number_of_copies(method):
    params = AugmentParams(copies=2, method=method, rate=0.3, seed=7)
    two = augmented_copies(TRAIN, params)
    assert two["copy"].tolist() == [0, 0, 0, 1, 1, 1]
    assert two["id"].tolist() == [3, 5, 8] * 2
    assert two.equals(augmented_copies(TRAIN, params))
    one = augmented_copies(TRAIN, params.model_copy(update={"copies": 1}))
    assert one.equals(two[two["copy"] == 0])


def test_word_dropout_copies_hold_only_the_source_tweets_words():
    two = augmented_copies(TRAIN, AugmentParams(copies=2, method="word_dropout", rate=0.3, seed=7))
    words = [set(text.split()) for text in TRAIN["text"]]
    assert all(set(text.split()) <= words[i % 3] for i, text in enumerate(two["text"]))


def test_the_committed_teachers_copies_are_what_params_yaml_makes_of_train(whole_data_set):
    """The teacher's augmented texts in git are those that augmentation.py and params.yaml's
    teacher.augment make of the data set's train split: editing either without `make teacher` fails."""
    params = load_params(PROJECT / "params.yaml")
    train, _ = split_dev(
        read_source_csv(whole_data_set / SOURCE_FILES["train"]), params.data.dev_size, params.data.seed
    )
    committed = pd.read_csv(
        PROJECT / "data/teacher" / AUGMENTED_FILE, dtype={"text": str}, keep_default_na=False
    )
    expected = augmented_copies(train, params.teacher.augment)
    assert committed["copy"].tolist() == expected["copy"].tolist()
    assert committed["id"].tolist() == expected["id"].tolist()
    assert committed["text"].tolist() == expected["text"].tolist()


def test_a_masked_copy_reaches_each_model_as_its_own_mask_token(tmp_path):
    teacher_files(tmp_path)
    augmented = pd.read_csv(tmp_path / AUGMENTED_FILE)
    augmented.loc[0, "text"] = f"$AAPL {MASK} estimates"
    augmented.to_csv(tmp_path / AUGMENTED_FILE, index=False)
    rows, _ = distillation_rows(TRAIN, tmp_path, DISTILL, "<mask>")
    assert rows["text"][3] == "$AAPL <mask> estimates"
    rows, _ = distillation_rows(TRAIN, tmp_path, DISTILL, None)
    assert rows["text"][3] == f"$AAPL {MASK} estimates"


def teacher_files(folder, train=TRAIN, copies=2):
    logits = np.arange(len(train) * 3, dtype=float).reshape(-1, 3) / 7
    write_logits(folder / "train.csv", train[["id"]], logits)
    augmented = augmented_copies(train, AugmentParams(copies=copies, method="word_dropout", rate=0.2, seed=0))
    write_logits(folder / AUGMENTED_FILE, augmented, np.ones((len(augmented), 3)))
    return logits


def test_distillation_rows_are_train_then_the_copies_with_the_teachers_logits(tmp_path):
    logits = teacher_files(tmp_path)
    rows, teacher = distillation_rows(TRAIN, tmp_path, DISTILL, None)
    assert rows["id"].tolist() == [3, 5, 8, 3, 5, 8]
    assert rows["label"].tolist()[:3] == [1, 2, 0]
    assert rows["label"][3:].isna().all()
    np.testing.assert_allclose(teacher[:3], logits, atol=1e-4)
    np.testing.assert_allclose(teacher[3:], 1.0)
    rows, teacher = distillation_rows(
        TRAIN, tmp_path, DISTILL.model_copy(update={"augmented_copies": 0}), None
    )
    assert len(rows) == len(teacher) == 3


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda folder: (folder / "train.csv").unlink(), r"train.csv: missing \(run `dvc repro teacher`\)"),
        (
            lambda folder: teacher_files(folder, TRAIN.iloc[:2]),
            r"train.csv: 2 rows, but the train split has 3: the teacher labelled other data",
        ),
        (
            lambda folder: teacher_files(folder, TRAIN.iloc[[1, 0, 2]]),
            r"train.csv: row 1 is id 5, where the train split has id 3",
        ),
        (
            lambda folder: (folder / "train.csv").write_text("id,logit_Bearish\n3,1.0\n"),
            r"train.csv: missing column\(s\) logit_Bullish, logit_Neutral",
        ),
        (
            lambda folder: (folder / "train.csv").write_text(
                "id," + ",".join(LOGIT_COLUMNS) + "\n3,1,2,3\n5,1,nan,2\n8,0,0,0\n"
            ),
            r"train.csv: row 2: a logit is not a finite number",
        ),
        (
            lambda folder: teacher_files(folder, copies=0),
            r"distill.augmented_copies: 1, but .*augmented.csv holds 0",
        ),
    ],
    ids=["missing", "fewer-rows", "other-order", "columns", "nan", "too-few-copies"],
)
def test_teacher_outputs_that_do_not_match_train_stop_with_one_line(tmp_path, damage, message):
    teacher_files(tmp_path)
    damage(tmp_path)
    with pytest.raises(FinsentError, match=message):
        distillation_rows(TRAIN, tmp_path, DISTILL, None)


def test_distillation_loss_is_hintons():
    hard = classification_loss(_train_params(), np.array([0, 1, 2]))  # plain cross-entropy
    student = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.5, 0.0], [0.0, 3.0, 0.0]])
    labels = torch.tensor([0, NO_LABEL])  # the second row is an augmented copy: no label
    loss = distillation_loss(hard, DISTILL)(student, labels, teacher).item()
    t = 2.0
    p_teacher = torch.softmax(teacher / t, dim=1)
    log_student = torch.log_softmax(student / t, dim=1)
    kl = (p_teacher * (p_teacher.log() - log_student)).sum(dim=1).mean().item()
    ce = torch.nn.functional.cross_entropy(student[:1], labels[:1]).item()
    assert loss == pytest.approx(0.5 * ce + 0.5 * t**2 * kl, rel=1e-5)
    # alpha 1: the labels alone; alpha 0 and the teacher's own logits: nothing to learn.
    alone = distillation_loss(hard, DISTILL.model_copy(update={"alpha": 1.0}))(student, labels, teacher)
    assert alone.item() == pytest.approx(ce, rel=1e-5)
    zero = distillation_loss(hard, DISTILL.model_copy(update={"alpha": 0.0}))(teacher, labels, teacher)
    assert zero.item() == pytest.approx(0.0, abs=1e-6)
    assert not math.isnan(distillation_loss(hard, DISTILL)(student, torch.tensor([NO_LABEL] * 2), teacher))


def _train_params():
    from test_training import train_params

    return train_params()


def test_predict_logits_are_in_row_order_after_length_grouped_training(tiny_bert_dir):
    """Trainer's evaluation sampler shuffles rows when training groups them by length (transformers 5):
    the teacher's logits must still be each row's own, as a plain forward pass gives them."""
    from transformers import AutoTokenizer

    from finsent.config import LoraParams
    from finsent.text import TextNormalization
    from finsent.tokenization import tokenize_frame
    from finsent.training import predict_logits, train_classifier

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    words = ["stocks", "rally", "as", "the", "fed", "holds", "rates", "and", "earnings", "beat", "estimates"]
    frame = pd.DataFrame(
        {
            "id": range(200),
            "text": [f"{' '.join(words[: 1 + i % len(words)])} {i}" for i in range(200)],
            "label": [i % 3 for i in range(200)],
        }
    )
    dataset = tokenize_frame(frame, tokenizer, TextNormalization())
    lora = LoraParams(enabled=True, r=2, alpha=4, dropout=0.0, target_modules="auto")
    params = _train_params().model_copy(update={"epochs": 1, "batch_size": 16})
    trainer, _ = train_classifier(tiny_bert_dir, lora, params, dataset, dataset.select(range(40)), tokenizer)
    logits = predict_logits(trainer, dataset, batch_size=8)
    model = trainer.model.eval()
    with torch.no_grad():
        for row in (0, 7, 13, 150, 199):
            alone = model(**tokenizer(frame["text"][row], return_tensors="pt")).logits[0].numpy()
            np.testing.assert_allclose(logits[row], alone, atol=1e-4)


def test_an_ensemble_is_the_log_of_its_runs_mean_probabilities():
    rng = np.random.default_rng(0)
    runs = [rng.normal(0, 3, size=(50, 3)).astype(np.float32) for _ in range(3)]
    ensemble = ensemble_logits(runs)
    assert ensemble.shape == (50, 3)
    mean = np.mean([np.exp(run) / np.exp(run).sum(axis=1, keepdims=True) for run in runs], axis=0)
    np.testing.assert_allclose(np.exp(ensemble), mean, rtol=1e-5)  # log-probabilities: softmax is exp
    np.testing.assert_array_equal(ensemble_logits(runs[:1]), runs[0])  # one run: its logits as they are
    # Runs that disagree with near certainty: each class keeps the share its one run gives it, where
    # log(mean(softmax)) would be log(0) for the probabilities that underflow.
    sure = [np.array([[800.0, 0.0, 0.0]]), np.array([[0.0, 800.0, 0.0]])]
    assert np.isfinite(ensemble_logits(sure)[:, :2]).all()
    np.testing.assert_allclose(np.exp(ensemble_logits(sure)), [[0.5, 0.5, 0.0]], atol=1e-12)
