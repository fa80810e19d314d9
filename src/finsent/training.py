"""Fine-tuning with transformers' Trainer: LoRA, dynamic padding, length-grouped batches, best dev epoch.

The train stage (the model that is served) and the teacher stage (the model distilled into it) both
train through `train_classifier`. With distillation, each training row carries the teacher's logits
(`TEACHER_LOGITS`), a model input of their own beside the label that `ClassifierTrainer.compute_loss`
takes, and the loss is `distillation_loss`.
"""

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from dvclive import Live
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import DataLoader
from transformers import (
    DataCollatorWithPadding,
    EvalPrediction,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from finsent.calibration import fit_temperature, scaled_log_loss
from finsent.config import LABELS, DistillParams, LoraParams, TrainParams
from finsent.distributed import shared_tempdir
from finsent.errors import FinsentError
from finsent.inference.cpu import this_cpu
from finsent.metrics import DEV_METRICS, SELECTION_METRIC, headline_metrics
from finsent.modeling import load_base_model, with_lora
from finsent.tokenization import NO_LABEL, TEACHER_LOGITS

PROGRESS_LINES = 20
"""Without a terminal (a log file, CI), training prints this many progress lines instead of a bar."""


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


def _progress_due(done: int, total: int) -> bool:
    """Whether a progress line is due after `done` of `total` steps: about PROGRESS_LINES in all."""
    return done % max(1, total // PROGRESS_LINES) == 0


class ProgressLines(TrainerCallback):
    """One line on stderr every so many steps, for logs that a progress bar would fill with redraws."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and _progress_due(state.global_step, state.max_steps):
            print(
                f"step {state.global_step}/{state.max_steps} (epoch {state.epoch:.2f})",
                file=sys.stderr,
                flush=True,
            )


def _dev_metrics(prediction: EvalPrediction) -> dict[str, float]:
    logits = torch.from_numpy(np.asarray(prediction.predictions, dtype=np.float32))
    return headline_metrics(prediction.label_ids, torch.softmax(logits, dim=-1).numpy())


def classification_loss(params: TrainParams, labels: np.ndarray) -> Callable:
    """Cross-entropy weighted, smoothed and focused as `params` say, over rows with a label.

    `labels` are the training set's (NO_LABEL rows aside), for the balanced class weights.
    """
    weights = None
    if params.class_weights == "balanced":
        classes = np.arange(len(LABELS))
        weights = torch.tensor(
            compute_class_weight("balanced", classes=classes, y=labels[labels != NO_LABEL]),
            dtype=torch.float32,
        )

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
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


def distillation_loss(hard_loss: Callable, params: DistillParams) -> Callable:
    """alpha * hard_loss(labelled rows) + (1 - alpha) * T^2 * KL(teacher_T || student_T) (all rows).

    The T^2 keeps the soft term's gradients at the scale of the hard term's whatever T (Hinton et al.,
    2015). Rows of augmented copies have NO_LABEL: the teacher's is their only target.
    """
    temperature = params.temperature

    def loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        labelled = labels != NO_LABEL
        hard = hard_loss(logits[labelled], labels[labelled]) if labelled.any() else logits.sum() * 0
        soft = torch.nn.functional.kl_div(
            torch.log_softmax(logits / temperature, dim=-1),
            torch.log_softmax(teacher_logits.float() / temperature, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        return params.alpha * hard + (1 - params.alpha) * temperature**2 * soft

    return loss


def batch_loss(train_params: TrainParams, distill: DistillParams | None, labels: np.ndarray) -> Callable:
    """The loss of a batch, `loss(logits, labels, teacher_logits)`: distillation's where the batch
    carries the teacher's logits (train, distilling), else the classification loss (dev, or no teacher).

    `labels` are the training set's, for the balanced class weights.
    """
    hard = classification_loss(train_params, labels)
    soft = distillation_loss(hard, distill) if distill is not None and distill.enabled else None

    def loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None) -> torch.Tensor:
        if teacher_logits is None:
            return hard(logits, labels)
        return soft(logits, labels, teacher_logits)

    return loss


class ClassifierTrainer(Trainer):
    """Trainer with this project's loss (`batch_loss`), which takes the teacher's logits where a batch
    carries them: the TEACHER_LOGITS input, taken out of the inputs before the model's forward.

    DataCollatorWithPadding batches that column as a tensor of its own, (batch, len(LABELS)), as it
    does every key beside the padded token ids; dev batches have none, and are scored on the labels.
    """

    # The loss is each batch's mean, not a sum over `num_items_in_batch`: Trainer divides it by the
    # number of gradient accumulation steps, as the class docstring asks a subclass to say.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, loss: Callable, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_loss = loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        teacher_logits = inputs.pop(TEACHER_LOGITS, None)
        outputs = model(**inputs)
        loss = self.batch_loss(outputs["logits"].float(), labels, teacher_logits)
        return (loss, outputs) if return_outputs else loss


def training_arguments(train: TrainParams, output_dir: str) -> TrainingArguments:
    cuda = torch.cuda.is_available()
    bf16 = (cuda and torch.cuda.is_bf16_supported()) or (
        not cuda and train.cpu_bf16 and this_cpu().native_bf16
    )
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
        # The datasets hold model inputs, the label and (distilling) the teacher's logits, which
        # compute_loss takes: Trainer would drop these by the model's signature, which lacks them.
        remove_unused_columns=False,
        bf16=bf16,
        fp16=cuda and not bf16,
        report_to="none",
        # A progress bar on a terminal; without one, ProgressLines prints a line now and then.
        disable_tqdm=not sys.stderr.isatty(),
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


def check_distillation_input(train_set: Dataset, distill: DistillParams | None) -> None:
    """Raise FinsentError unless `train_set` holds the teacher's logits exactly when distilling."""
    distilling = distill is not None and distill.enabled
    if distilling != (TEACHER_LOGITS in train_set.column_names):
        raise FinsentError(
            f"distill.enabled: {str(distilling).lower()}, but the training set "
            f"{'lacks' if distilling else 'holds'} the teacher's logits (run `dvc repro tokenize`)"
        )


def train_classifier(
    checkpoint_dir: Path,
    lora: LoraParams,
    train: TrainParams,
    train_set: Dataset,
    dev_set: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    distill: DistillParams | None = None,
    live: Live | None = None,
) -> tuple[Trainer, dict]:
    """Train on `train_set`, keep the epoch with the best dev macro-F1 (`trainer.model` on return).

    Returns the Trainer and a summary: the chosen epoch's dev metrics, the last train loss and the
    trainable parameters (also logged to `live`, if given). In a launch of several processes every one
    trains its share and gets the same model; rank 0 alone writes outputs.
    """
    check_distillation_input(train_set, distill)
    set_seed(train.seed)  # before the head is initialised
    model = with_lora(load_base_model(checkpoint_dir), lora)
    callbacks = [] if live is None else [EpochLogger(live)]
    if not sys.stderr.isatty():
        callbacks.append(ProgressLines())
    with shared_tempdir(prefix="finsent-checkpoints-") as folder:
        trainer = ClassifierTrainer(
            model=model,
            args=training_arguments(train, folder),
            train_dataset=train_set,
            eval_dataset=dev_set,
            data_collator=DataCollatorWithPadding(
                tokenizer, pad_to_multiple_of=8 if torch.cuda.is_available() else None
            ),
            loss=batch_loss(train, distill, np.asarray(train_set["label"])),
            compute_metrics=_dev_metrics,
            callbacks=callbacks,
        )
        result = trainer.train()
    # Speed goes to the log, not the summary: the summary is the run's metrics, which a rerun of the
    # same params must reproduce on any machine.
    if trainer.is_world_process_zero():
        print(
            f"trained in {result.metrics['train_runtime']:.0f} s, "
            f"{result.metrics['train_samples_per_second']:.1f} samples/s",
            file=sys.stderr,
            flush=True,
        )
    summary = training_summary(trainer)
    if live is not None:
        live.summary.update(summary)
    return trainer, summary


def training_summary(trainer: Trainer) -> dict:
    """The chosen epoch's dev metrics, the epoch, the last train loss and the trainable parameters."""
    history = trainer.state.log_history
    best = next(
        entry for entry in history if entry.get(f"eval_{SELECTION_METRIC}") == trainer.state.best_metric
    )
    return {
        "dev": {name: best[f"eval_{name}"] for name in DEV_METRICS},
        "best_epoch": round(best["epoch"]),
        "train": {
            "loss": next(entry["loss"] for entry in reversed(history) if "loss" in entry),
            "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        },
    }


def predict_logits(trainer: Trainer, dataset: Dataset, batch_size: int) -> np.ndarray:
    """The logits of `trainer.model` for every row of `dataset`, shape (rows, len(LABELS)), in its order.

    Rows run in order of length, so that each batch pads little, through a plain DataLoader; the result
    is put back in order. Not `trainer.predict`: with train_sampling_strategy="group_by_length", Trainer
    samples evaluation rows by length too (huggingface/transformers#33514), in a seeded shuffle, and its
    predictions come back in that order. Every process of a launch predicts every row, with the model
    as training left it (under autocast if training used it: accelerate wraps its forward).
    """
    order = np.argsort([len(ids) for ids in dataset["input_ids"]], kind="stable")
    collator = trainer.data_collator
    inputs = [name for name in collator.tokenizer.model_input_names if name in dataset.column_names]
    batches = DataLoader(
        dataset.select(order).select_columns(inputs), batch_size=batch_size, collate_fn=collator
    )
    model = trainer.model.eval()
    logits = []
    with torch.inference_mode():
        for done, batch in enumerate(batches, start=1):
            logits.append(model(**batch.to(trainer.args.device)).logits.float().cpu().numpy())
            # A line now and then: labelling the teacher's tens of thousands of texts runs for minutes
            # on a CPU.
            if trainer.is_world_process_zero() and (
                _progress_due(done, len(batches)) or done == len(batches)
            ):
                print(f"predicted batch {done}/{len(batches)}", file=sys.stderr, flush=True)
    result = np.empty((len(dataset), len(LABELS)), dtype=np.float32)
    result[order] = np.concatenate(logits)
    return result


def calibrate_on_dev(trainer: Trainer, dev_set: Dataset) -> dict[str, float]:
    """The temperature fitted on the dev logits of `trainer.model` (the chosen epoch's), and dev's
    log-loss before (T = 1) and after. Every process of a launch computes it, on every dev row."""
    logits = predict_logits(trainer, dev_set, trainer.args.per_device_eval_batch_size)
    labels = np.asarray(dev_set["label"])
    temperature = fit_temperature(logits, labels)
    return {
        "temperature": temperature,
        "dev_log_loss_before": scaled_log_loss(logits, labels, 1.0),
        "dev_log_loss_after": scaled_log_loss(logits, labels, temperature),
    }
