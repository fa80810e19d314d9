"""Fine-tuning with transformers' Trainer: LoRA, dynamic padding, length-grouped batches, best dev epoch."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from dvclive import Live
from sklearn.utils.class_weight import compute_class_weight
from transformers import (
    DataCollatorWithPadding,
    EvalPrediction,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from finsent.config import LABELS, Params, TrainParams
from finsent.distributed import shared_tempdir
from finsent.metrics import DEV_METRICS, SELECTION_METRIC, headline_metrics
from finsent.modeling import load_base_model, save_classifier, with_lora
from finsent.pretrained import resolve_checkpoint
from finsent.text import load_text_processing
from finsent.tokenization import TOKENIZER_SUBDIR, read_tokenized


class EpochLogger(TrainerCallback):
    """Logs train loss and dev metrics to dvclive, one step per epoch.

    transformers' own DVCLiveCallback advances a step at every log event (two per epoch here: train
    loss, then dev metrics) and records every TrainingArguments field as a param; hence this one.
    """

    def __init__(self, live: Live):
        self.live = live

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "loss" in logs:
            self.live.step = round(state.epoch)
            self.live.log_metric("train/loss", logs["loss"])

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.is_world_process_zero:
            self.live.step = round(state.epoch)
            for name in DEV_METRICS:
                self.live.log_metric(f"dev/{name}", metrics[f"eval_{name}"])
            self.live.make_summary()


def _dev_metrics(prediction: EvalPrediction) -> dict[str, float]:
    logits = torch.from_numpy(np.asarray(prediction.predictions, dtype=np.float32))
    return headline_metrics(prediction.label_ids, torch.softmax(logits, dim=-1).numpy())


def classification_loss(params: TrainParams, train_set: Dataset) -> Callable:
    """Cross-entropy weighted, smoothed and focused as `params` say: Trainer's compute_loss_func."""
    weights = None
    if params.class_weights == "balanced":
        classes = np.arange(len(LABELS))
        weights = torch.tensor(
            compute_class_weight("balanced", classes=classes, y=np.asarray(train_set["label"])),
            dtype=torch.float32,
        )

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"].float()
        weight = None if weights is None else weights.to(logits.device)
        smoothing = params.label_smoothing
        if not params.focal_gamma:
            return torch.nn.functional.cross_entropy(logits, labels, weight=weight, label_smoothing=smoothing)
        # Focal loss (Lin et al., 2017), written here: torch and torchvision have only its binary
        # form. The probability is detached, as a weight: the gradient is cross-entropy's, scaled.
        per_tweet = torch.nn.functional.cross_entropy(
            logits, labels, weight=weight, label_smoothing=smoothing, reduction="none"
        )
        p_true = torch.softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1).detach()
        focused = per_tweet * (1 - p_true) ** params.focal_gamma
        # The mean as cross_entropy takes it: over the weights of the batch's classes, if weighted.
        return focused.mean() if weight is None else focused.sum() / weight[labels].sum()

    return loss


def training_arguments(params: Params, output_dir: str) -> TrainingArguments:
    train = params.train
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    # train.batch_size is the global batch: each of the N processes takes its share of every step.
    per_device_batch_size = train.batch_size // train.num_processes
    return TrainingArguments(
        output_dir=output_dir,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler_type,
        warmup_steps=train.warmup_ratio,  # a float below 1 is a share of all steps
        num_train_epochs=train.epochs,
        per_device_train_batch_size=per_device_batch_size,
        per_device_eval_batch_size=2 * per_device_batch_size,
        weight_decay=train.weight_decay,
        seed=train.seed,
        data_seed=train.seed,
        train_sampling_strategy="group_by_length",
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model=SELECTION_METRIC,
        greater_is_better=True,
        save_total_limit=1,
        save_only_model=True,
        label_names=["labels"],
        bf16=bf16,
        fp16=cuda and not bf16,
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=cuda,
        # Without a GPU, say so: under torchrun accelerate then trains on the gloo process group; it
        # would otherwise see no device to be distributed over, and each process would train alone.
        use_cpu=not cuda,
        # Our loss is the mean over each process's share and DDP averages the N shares' gradients:
        # the global batch's mean. Trainer would also multiply the loss by N (meant for losses summed
        # over `num_items_in_batch`): logged loss and gradients N times too large. No-op for N = 1.
        average_tokens_across_devices=False,
        ddp_find_unused_parameters=False,  # every trainable weight gets a gradient (DDP fails if not)
    )


def train_classifier(
    params: Params, tokenized_dir: Path, model_dir: Path | None, live: Live | None
) -> dict | None:
    """Train on train, keep the epoch with the best dev macro-F1, save it to `model_dir`.

    Returns the summary logged to `live`: the chosen epoch's dev metrics and the training speed.
    In a launch of several processes, the ones other than rank 0 get no `model_dir` and no `live`:
    they train their share and write nothing (and return None).
    """
    checkpoint_dir = resolve_checkpoint(params.model.checkpoint, params.model.revision)
    set_seed(params.train.seed)  # before the head is initialised
    model = with_lora(load_base_model(checkpoint_dir), params.lora)
    tokenizer, normalize = load_text_processing(tokenized_dir / TOKENIZER_SUBDIR)
    train_set = read_tokenized(tokenized_dir, "train")
    with shared_tempdir(prefix="finsent-checkpoints-") as scratch:
        trainer = Trainer(
            model=model,
            args=training_arguments(params, scratch),
            train_dataset=train_set,
            eval_dataset=read_tokenized(tokenized_dir, "dev"),
            data_collator=DataCollatorWithPadding(
                tokenizer, pad_to_multiple_of=8 if torch.cuda.is_available() else None
            ),
            compute_loss_func=classification_loss(params.train, train_set),
            compute_metrics=_dev_metrics,
            callbacks=[] if live is None else [EpochLogger(live)],
        )
        result = trainer.train()
    if live is None:
        return None
    best = next(
        entry
        for entry in trainer.state.log_history
        if entry.get(f"eval_{SELECTION_METRIC}") == trainer.state.best_metric
    )
    summary = {
        "dev": {name: best[f"eval_{name}"] for name in DEV_METRICS},
        "best_epoch": round(best["epoch"]),
        "train": {
            "loss": live.summary["train"]["loss"],
            "samples_per_second": result.metrics["train_samples_per_second"],
            "runtime_s": result.metrics["train_runtime"],
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        },
    }
    live.summary.update(summary)
    save_classifier(trainer.model, tokenizer, normalize, params.model.checkpoint, checkpoint_dir, model_dir)
    return summary
