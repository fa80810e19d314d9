"""Distillation's input: the teacher's logits as a column and a batch tensor of their own, the loss that
takes them, and a training run that gives the figures that the same loss gave when they were packed
into the labels."""

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer, DataCollatorWithPadding

from finsent.config import DistillParams, LoraParams, TrainParams
from finsent.errors import FinsentError
from finsent.modeling import load_base_model, with_lora
from finsent.text import TextNormalization
from finsent.tokenization import NO_LABEL, TEACHER_LOGITS, tokenize_frame
from finsent.training import (
    ClassifierTrainer,
    batch_loss,
    calibrate_on_dev,
    train_classifier,
    training_arguments,
)

DISTILL = DistillParams(enabled=True, alpha=0.3, temperature=2.0, augmented_copies=1)
LORA = LoraParams(enabled=True, r=4, alpha=8, dropout=0.0, target_modules="auto")
CUES = [
    ["falls", "drops", "plunges", "misses"],
    ["rises", "jumps", "soars", "beats"],
    ["holds", "reports", "says", "files"],
]
FILLER = [
    "the",
    "stock",
    "market",
    "today",
    "after",
    "earnings",
    "call",
    "with",
    "guidance",
    "for",
    "next",
    "quarter",
]


def train_params(**changes) -> TrainParams:
    values = {
        "learning_rate": 1e-2,
        "lr_scheduler_type": "linear",
        "warmup_ratio": 0.0,
        "epochs": 3,
        "batch_size": 16,
        "num_processes": 1,
        "weight_decay": 0.0,
        "class_weights": "balanced",
        "label_smoothing": 0.1,
        "focal_gamma": 2.0,
        "seed": 0,
        "cpu_bf16": False,
    }
    return TrainParams(**(values | changes))


def cue_tweets(rows: int) -> pd.DataFrame:
    """Tweets whose label one word gives away: a task that a tiny random encoder learns in a few epochs
    (on real tweets it learns nothing, and every loss gives the same always-Neutral model)."""
    rng = np.random.default_rng(1)
    labels = rng.choice(3, size=rows, p=[0.2, 0.3, 0.5])
    texts = []
    for i, label in enumerate(labels):
        before, cue = rng.choice(FILLER, 3), CUES[label][rng.integers(4)]
        texts.append(" ".join(["$" + "ABCDEFGH"[i % 8] * 3, *before, cue, *rng.choice(FILLER, 1 + i % 5)]))
    return pd.DataFrame({"id": range(rows), "label": labels, "text": texts})


def distillation_set(train: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Train's rows then a copy of each with every other word (no label), and teacher logits for all."""
    copies = train.assign(text=train["text"].str.split().str[::2].str.join(" "), label=None)
    onehot = np.eye(3)[train["label"].astype(int).to_numpy()]
    noise = np.random.default_rng(0).normal(size=(2 * len(train), 3))
    return pd.concat([train, copies], ignore_index=True), np.concatenate([onehot * 3, onehot * 2]) + noise


def hinton(logits, labels, teacher, weights, smoothing, gamma, alpha, t) -> float:
    """The distillation loss written out from its definition, row by row, in float64."""
    logits, teacher = logits.double(), teacher.double()
    log_p = torch.log_softmax(logits, dim=1)
    weights = torch.ones(3, dtype=torch.float64) if weights is None else weights.double()
    hard_sum = weight_sum = 0.0
    for row, label in enumerate(labels.tolist()):
        if label == NO_LABEL:
            continue
        # Smoothed target: 1 - s on the label, s / K spread on every class; each class's term weighted.
        ce = -(1 - smoothing) * weights[label] * log_p[row, label]
        ce -= smoothing / 3 * (weights * log_p[row]).sum()
        hard_sum += ce * (1 - log_p[row, label].exp()) ** gamma
        weight_sum += weights[label]
    hard = hard_sum / weight_sum if weight_sum else 0.0
    p_teacher = torch.softmax(teacher / t, dim=1)
    kl = (p_teacher * (p_teacher.log() - torch.log_softmax(logits / t, dim=1))).sum(dim=1).mean()
    return float(alpha * hard + (1 - alpha) * t**2 * kl)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    ("class_weights", "smoothing", "gamma", "alpha", "t"),
    [
        ("none", 0.0, 0.0, 0.5, 2.0),
        ("balanced", 0.0, 0.0, 0.3, 1.0),
        ("none", 0.1, 0.0, 0.7, 3.0),
        ("none", 0.0, 2.0, 0.5, 4.0),
        ("balanced", 0.1, 2.0, 0.3, 2.0),
        ("balanced", 0.1, 2.0, 1.0, 2.0),
        ("balanced", 0.1, 2.0, 0.0, 2.0),
    ],
)
def test_the_batch_loss_is_hintons_formula_on_random_tensors(seed, class_weights, smoothing, gamma, alpha, t):
    generator = torch.Generator().manual_seed(seed)
    train_labels = np.array([0] * 3 + [1] * 5 + [2] * 12)  # balanced weights: 20 / (3 * count)
    weights = torch.tensor([20 / 9, 20 / 15, 20 / 36]) if class_weights == "balanced" else None
    logits = 3 * torch.randn(16, 3, generator=generator)
    teacher = 3 * torch.randn(16, 3, generator=generator)
    labels = torch.randint(0, 3, (16,), generator=generator)
    labels[torch.rand(16, generator=generator) < 0.4] = NO_LABEL  # augmented copies: the teacher's alone
    params = train_params(class_weights=class_weights, label_smoothing=smoothing, focal_gamma=gamma)
    distill = DISTILL.model_copy(update={"alpha": alpha, "temperature": t})
    loss = batch_loss(params, distill, train_labels)(logits, labels, teacher).item()
    assert loss == pytest.approx(
        hinton(logits, labels, teacher, weights, smoothing, gamma, alpha, t), rel=1e-5
    )
    # Without the teacher's logits (dev batches), the labelled rows' classification loss.
    labelled = labels != NO_LABEL
    plain = batch_loss(params, distill, train_labels)(logits[labelled], labels[labelled], None).item()
    assert plain == pytest.approx(
        hinton(logits[labelled], labels[labelled], teacher[labelled], weights, smoothing, gamma, 1.0, t),
        rel=1e-5,
    )


def test_the_collator_batches_the_teacher_logits_as_their_own_tensor_beside_plain_labels(tiny_bert_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    frame = pd.DataFrame({"text": ["a b c", "d"], "label": pd.Series([2, None], dtype=object)})
    rows = tokenize_frame(frame, tokenizer, TextNormalization(), np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.5]]))
    batch = DataCollatorWithPadding(tokenizer)([rows[0], rows[1]])
    assert batch["labels"].tolist() == [2, NO_LABEL]
    assert batch[TEACHER_LOGITS].dtype == torch.float32
    assert batch[TEACHER_LOGITS].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.5]]
    dev = tokenize_frame(frame.assign(label=[2, 0]), tokenizer, TextNormalization())
    assert TEACHER_LOGITS not in DataCollatorWithPadding(tokenizer)([dev[0], dev[1]])


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_compute_loss_takes_the_teacher_logits_out_of_the_models_inputs(tiny_bert_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    frame = pd.DataFrame(
        {
            "text": ["$AAPL beats estimates", "Fed holds rates", "$TSLA falls"],
            "label": pd.Series([1, None, 0], dtype=object),
        }
    )
    teacher = np.array([[0.0, 2.0, 1.0], [1.0, 1.0, 3.0], [2.0, 0.0, 0.0]])
    rows = tokenize_frame(frame, tokenizer, TextNormalization(), teacher)
    dev = tokenize_frame(frame.assign(label=[1, 2, 0]), tokenizer, TextNormalization())
    params = train_params()
    model = with_lora(load_base_model(tiny_bert_dir), LORA)
    loss = batch_loss(params, DISTILL, np.array([0, 1, 2, 2]))
    trainer = ClassifierTrainer(
        model=model,
        args=training_arguments(params, str(tmp_path)),
        train_dataset=rows,
        eval_dataset=dev,
        data_collator=DataCollatorWithPadding(tokenizer),
        loss=loss,
    )
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(set(kwargs)), with_kwargs=True)
    batch = trainer.data_collator([rows[i] for i in range(3)])
    value, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    assert seen == [{"input_ids", "token_type_ids", "attention_mask"}]
    assert TEACHER_LOGITS in batch and "labels" in batch  # the caller's batch is left whole
    expected = loss(outputs.logits, batch["labels"], torch.tensor(teacher, dtype=torch.float32))
    assert value.item() == pytest.approx(expected.item())
    assert value.item() != pytest.approx(loss(outputs.logits[[0, 2]], torch.tensor([1, 0]), None).item())
    # Dev: no teacher logits, the classification loss; Trainer's own evaluation gives the same.
    value, outputs = trainer.compute_loss(model, trainer.data_collator([dev[i] for i in range(3)]), True)
    assert value.item() == pytest.approx(loss(outputs.logits, torch.tensor([1, 2, 0]), None).item())
    assert trainer.evaluate()["eval_loss"] == pytest.approx(value.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("distill", "with_teacher", "message"),
    [
        (DISTILL, False, "distill.enabled: true, but the training set lacks the teacher's logits"),
        (None, True, "distill.enabled: false, but the training set holds the teacher's logits"),
        (
            DISTILL.model_copy(update={"enabled": False}),
            True,
            "distill.enabled: false, but the training set holds the teacher's logits",
        ),
    ],
    ids=["distilling-without-logits", "no-distill-params", "distill-off"],
)
def test_a_training_set_out_of_step_with_distill_is_refused(tiny_bert_dir, distill, with_teacher, message):
    columns = {"input_ids": [[101, 102]], "label": [0]}
    train_set = Dataset.from_dict(columns | ({TEACHER_LOGITS: [[0.0, 0.0, 1.0]]} if with_teacher else {}))
    with pytest.raises(FinsentError, match=rf"^{message} \(run `dvc repro tokenize`\)$"):
        train_classifier(tiny_bert_dir, LORA, train_params(), train_set, train_set, None, distill)


RECORDED = {
    "dev": {"macro_f1": 0.5643726989521382, "accuracy": 0.6625, "log_loss": 0.7456156015396118},
    "best_epoch": 3,
    "train": {"loss": 0.5819293212890625, "trainable_parameters": 4739},
    "calibration": {
        "temperature": 0.3968600374908685,
        "dev_log_loss_before": 0.7456155891288236,
        "dev_log_loss_after": 0.652352989434452,
    },
}
"""What this run gave when the collator packed the teacher's logits into the labels and Trainer's
`compute_loss_func` unpacked them (the same loss, reached another way), on an Intel Xeon."""


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_a_tiny_distillation_run_gives_the_recorded_figures(tiny_bert_dir):
    """Class weights, smoothing, focal loss, unlabelled copies and the choice of epoch on dev: the run
    must give the figures recorded. Losses to float32 rounding across CPUs; labels may flip by a tweet."""
    tweets = cue_tweets(560)
    rows, teacher = distillation_set(tweets.iloc[:400])
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    normalize = TextNormalization()
    dev = tokenize_frame(tweets.iloc[400:], tokenizer, normalize)
    train_set = tokenize_frame(rows, tokenizer, normalize, teacher)
    trainer, summary = train_classifier(
        tiny_bert_dir, LORA, train_params(), train_set, dev, tokenizer, DISTILL
    )
    summary["calibration"] = calibrate_on_dev(trainer, dev)
    assert summary["best_epoch"] == RECORDED["best_epoch"]
    assert summary["train"] == pytest.approx(RECORDED["train"], rel=1e-4)
    assert summary["calibration"] == pytest.approx(RECORDED["calibration"], rel=1e-4)
    assert summary["dev"]["log_loss"] == pytest.approx(RECORDED["dev"]["log_loss"], rel=1e-4)
    for name in ("macro_f1", "accuracy"):
        assert summary["dev"][name] == pytest.approx(RECORDED["dev"][name], abs=0.01)
