import math
import tempfile

import numpy as np
import pytest
import torch
from datasets import Dataset
from sklearn.metrics import log_loss
from transformers import AutoTokenizer

from finsent.config import LoraParams, TrainParams
from finsent.data import SOURCE_FILES, read_source_csv
from finsent.inference.predictors import TorchPredictor
from finsent.modeling import save_classifier
from finsent.temperature import load_temperature
from finsent.text import TextNormalization
from finsent.tokenization import tokenize_frame
from finsent.training import calibrate_on_dev, classification_loss, train_classifier

# Train with 6 Neutral, 3 Bullish, 1 Bearish rows: "balanced" weights are 10 / (3 * count).
TRAIN = Dataset.from_dict({"label": [2] * 6 + [1] * 3 + [0]})


def train_params(**changes) -> TrainParams:
    values = {
        "learning_rate": 1e-3,
        "lr_scheduler_type": "linear",
        "warmup_ratio": 0.0,
        "epochs": 1,
        "batch_size": 8,
        "num_processes": 1,
        "weight_decay": 0.0,
        "class_weights": "none",
        "label_smoothing": 0.0,
        "focal_gamma": 0.0,
        "seed": 0,
        "cpu_bf16": False,
    }
    return TrainParams(**(values | changes))


def loss_of(params: TrainParams, logits: list[list[float]], labels: list[int]) -> float:
    loss = classification_loss(params, np.asarray(TRAIN["label"]))
    return loss(torch.tensor(logits), torch.tensor(labels)).item()


def test_plain_loss_is_cross_entropy():
    # Uniform logits: -log(1/3) whatever the label.
    assert loss_of(train_params(), [[0.0, 0.0, 0.0]], [0]) == pytest.approx(math.log(3))


def test_balanced_weights_favour_the_rare_class():
    logits = [[0.0, 0.0, 5.0], [0.0, 0.0, 5.0]]  # wrong on a Bearish row, right on a Neutral one
    labels = [0, 2]
    plain = loss_of(train_params(), logits, labels)
    balanced = loss_of(train_params(class_weights="balanced"), logits, labels)
    # Weighted mean: the Bearish row (weight 10/3) outweighs the Neutral one (weight 10/18).
    ce = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels), reduction="none")
    expected = (ce[0] * 10 / 3 + ce[1] * 10 / 18) / (10 / 3 + 10 / 18)
    assert balanced == pytest.approx(expected.item(), rel=1e-5)
    assert balanced > plain


def test_label_smoothing_penalises_certainty():
    confident = [[0.0, 0.0, 30.0]]
    assert loss_of(train_params(), confident, [2]) == pytest.approx(0.0, abs=1e-6)
    assert loss_of(train_params(label_smoothing=0.1), confident, [2]) > 0.5


def test_focal_loss_discounts_easy_tweets_more_than_hard_ones():
    easy, hard = [[0.0, 0.0, 3.0]], [[0.0, 0.0, -1.0]]  # Neutral at p = 0.91 and at p = 0.12
    for logits in (easy, hard):
        p = torch.softmax(torch.tensor(logits[0]), dim=0)[2].item()
        focal = loss_of(train_params(focal_gamma=2.0), logits, [2])
        assert focal == pytest.approx((1 - p) ** 2 * -math.log(p), rel=1e-5)
    ratio = {
        name: loss_of(train_params(focal_gamma=2.0), logits, [2]) / loss_of(train_params(), logits, [2])
        for name, logits in (("easy", easy), ("hard", hard))
    }
    assert ratio["easy"] < 0.01 < 0.7 < ratio["hard"]


def test_focal_loss_keeps_the_class_weights():
    logits, labels = [[0.0, 0.0, 3.0], [0.0, 0.0, -1.0]], [2, 0]  # an easy Neutral, a hard Bearish
    ce = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels), reduction="none")
    p_true = torch.softmax(torch.tensor(logits), dim=1)[[0, 1], labels]
    weight = torch.tensor([10 / 18, 10 / 3])  # balanced: Neutral, Bearish
    expected = ((1 - p_true) ** 2 * ce * weight).sum() / weight.sum()
    params = train_params(focal_gamma=2.0, class_weights="balanced")
    assert loss_of(params, logits, labels) == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_the_temperature_fitted_on_dev_is_saved_and_gives_the_calibrated_dev_log_loss(
    tiny_bert_dir, small_mirror, tmp_path, monkeypatch
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # checkpoints, and predictions' folder
    (tmp_path / "tmp").mkdir()
    tweets = read_source_csv(small_mirror / SOURCE_FILES["train"])
    train_rows, dev_rows = tweets.iloc[:400], tweets.iloc[400:520]
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    normalize = TextNormalization()
    trainer, summary = train_classifier(
        tiny_bert_dir,
        LoraParams(enabled=True, r=4, alpha=8, dropout=0.0, target_modules="auto"),
        train_params(epochs=1, batch_size=16),
        tokenize_frame(train_rows, tokenizer, normalize),
        tokenize_frame(dev_rows, tokenizer, normalize),
        tokenizer,
    )
    calibration = calibrate_on_dev(trainer, tokenize_frame(dev_rows, tokenizer, normalize))
    # Dev's logits in dev's order: at T = 1, the log-loss that chose the epoch.
    assert calibration["dev_log_loss_before"] == pytest.approx(summary["dev"]["log_loss"], abs=1e-5)
    assert calibration["dev_log_loss_after"] <= calibration["dev_log_loss_before"]
    assert calibration["temperature"] != pytest.approx(1.0, abs=1e-3)
    assert not list((tmp_path / "tmp").iterdir())  # no Trainer folder left behind

    models = tmp_path / "models"
    save_classifier(
        trainer.model, tokenizer, normalize, calibration["temperature"], "tiny", tiny_bert_dir, models
    )
    assert load_temperature(models) == calibration["temperature"]
    probabilities = TorchPredictor.from_dir(models, batch_size=32).predict_proba(dev_rows["text"].tolist())
    labels = dev_rows["label"].astype(int).to_numpy()
    assert log_loss(labels, probabilities, labels=[0, 1, 2]) == pytest.approx(
        calibration["dev_log_loss_after"], abs=1e-4
    )
