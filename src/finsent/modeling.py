"""The classifier: a pre-trained encoder with LoRA adapters and a fully trained head, saved and reloaded."""

import contextlib
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from finsent.config import LABELS, LoraParams
from finsent.errors import FinsentError
from finsent.temperature import load_temperature, save_temperature
from finsent.text import TextNormalization, load_text_processing, save_text_processing

LORA_TARGETS = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "mpnet": ["q", "k", "v", "o", "dense"],
}
"""Names of every linear layer of the encoder, by `model_type` (DeBERTa-v3 checkpoints are deberta-v2)."""

HEAD_MODULES = ("pooler", "classifier")
"""Modules of the sequence-classification head: trained in full and saved with the adapter."""

BASE_SUBDIR = "base"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _quiet_load(load, *args, **kwargs):
    # The head is new, so transformers warns that its weights are "newly initialized" (and reports the
    # pre-training head's weights as unused): expected here. Its bar over the weights loaded takes
    # under a second and would fill logs with redraws.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return load(*args, **kwargs)
    finally:
        hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(verbosity)


_LAYER_KEY = re.compile(r"^(.*\b(?:encoder|transformer)\.layer\.)(\d+)(\..*)$")
"""A weight of one encoder layer: BERT, RoBERTa, DeBERTa and MPNet name them `encoder.layer.N.`,
DistilBERT `transformer.layer.N.`."""


def kept_layers(total: int, layers: int) -> list[int]:
    """`layers` of `total` layers, evenly spaced from the first to the last: 6 of 12 are 0, 2, 4, 7, 9
    and 11, the layers DistilBERT was initialised from (Sanh et al., 2019)."""
    if layers == 1:
        return [0]
    return [round(i * (total - 1) / (layers - 1)) for i in range(layers)]


def checkpoint_with_layers(checkpoint_dir: Path, layers: int, out_dir: Path) -> Path:
    """A copy of the checkpoint in `out_dir` that keeps `layers` of its encoder's layers (`kept_layers`),
    renumbered: a shallower encoder of the same width, which then serves as the checkpoint. Written
    here: transformers loads a checkpoint whole, and a smaller config alone would keep its first layers.
    """
    from safetensors.torch import load_file, save_file

    config = AutoConfig.from_pretrained(checkpoint_dir)
    total = config.num_hidden_layers
    if layers > total:
        raise FinsentError(f"model.layers: {layers}, but {checkpoint_dir} has {total}")
    weights_file = Path(checkpoint_dir) / "model.safetensors"
    if not weights_file.is_file():
        raise FinsentError(
            f"model.layers: needs a checkpoint with model.safetensors, not in {checkpoint_dir}"
        )
    renumber = {old: new for new, old in enumerate(kept_layers(total, layers))}
    weights = {}
    for key, tensor in load_file(weights_file).items():
        match = _LAYER_KEY.match(key)
        if match is None:
            weights[key] = tensor
        elif int(match[2]) in renumber:
            weights[f"{match[1]}{renumber[int(match[2])]}{match[3]}"] = tensor.contiguous()
    config.num_hidden_layers = layers
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out_dir)
    save_file(weights, out_dir / "model.safetensors", metadata={"format": "pt"})
    return out_dir


def load_base_model(checkpoint_dir: Path) -> PreTrainedModel:
    """The pre-trained encoder with a new three-way classification head named by LABELS."""
    config = AutoConfig.from_pretrained(
        checkpoint_dir,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
    )
    return _quiet_load(AutoModelForSequenceClassification.from_pretrained, checkpoint_dir, config=config)


def lora_config(model: PreTrainedModel, params: LoraParams) -> LoraConfig:
    """LoRA on the encoder's linear layers; the head (pooler and classifier) trained and saved in full."""
    if params.target_modules == "auto":
        model_type = model.config.model_type
        if model_type not in LORA_TARGETS:
            raise FinsentError(
                f"lora.target_modules: no default for model type {model_type!r}; "
                f"list the module names (defaults exist for {', '.join(LORA_TARGETS)})"
            )
        targets = LORA_TARGETS[model_type]
    else:
        targets = params.target_modules
    heads = [name for name, _ in model.named_modules() if name.split(".")[-1] in HEAD_MODULES]
    # A target such as "dense" also names the pooler's layer, which is trained in full instead.
    inside_heads = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and any(name.startswith(f"{h}.") for h in heads)
    ]
    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=params.r,
        lora_alpha=params.alpha,
        lora_dropout=params.dropout,
        target_modules=targets,
        exclude_modules=inside_heads or None,
        modules_to_save=[name.split(".")[-1] for name in heads],
    )


@contextlib.contextmanager
def peft_wrapping_quietly() -> Iterator[None]:
    """Around peft wrapping a model (training it, or loading a trained adapter).

    peft reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model: a notice for
    peft's authors, nothing a user of this project can act on.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        yield


def with_lora(model: PreTrainedModel, params: LoraParams) -> PeftModel | PreTrainedModel:
    """The model wrapped with LoRA adapters; as it is (every weight trainable) when LoRA is off."""
    if not params.enabled:
        return model
    config = lora_config(model, params)
    try:
        with peft_wrapping_quietly():
            return get_peft_model(model, config)
    except ValueError as error:
        raise FinsentError(f"lora.target_modules: {error}") from None


def save_classifier(
    model: PeftModel | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    normalize: TextNormalization,
    temperature: float,
    checkpoint: str,
    checkpoint_dir: Path,
    out_dir: Path,
) -> None:
    """Write all that prediction needs, hub or no hub: base weights, adapter and head, tokenizer and the
    text normalisation before it, and the temperature that calibrates the probabilities after it
    (`finsent.calibration`). `checkpoint` is the base model's name as params.yaml gives it, and
    `checkpoint_dir` the folder it resolved to.

    A fully fine-tuned model (LoRA off) is saved whole as the base, with no adapter.
    """
    base_dir = out_dir / BASE_SUBDIR
    save_text_processing(out_dir, tokenizer, normalize)
    save_temperature(out_dir, temperature)
    if not isinstance(model, PeftModel):
        model.save_pretrained(base_dir)
        return
    base_dir.mkdir(parents=True)
    model.get_base_model().config.save_pretrained(base_dir)  # holds the label map
    # The base weights are the checkpoint's, untouched by LoRA: copied, so that they hash the same in
    # DVC's cache for every experiment.
    for name in _WEIGHT_FILES:
        if (checkpoint_dir / name).is_file():
            shutil.copyfile(checkpoint_dir / name, base_dir / name)
    # peft writes the folder the base was loaded from (inside site-packages or a hub cache) into the
    # adapter's config (the name it recorded when it wrapped the model) and into the model card (the base
    # config's name, and the base model's own in a tag); its save_pretrained takes no name. The
    # checkpoint's name in all three, so that the output's files, and its hash in dvc.lock, do not
    # depend on where the project is checked out.
    base = model.get_base_model()
    base.config.name_or_path = base.name_or_path = checkpoint
    for adapter in model.peft_config.values():
        adapter.base_model_name_or_path = checkpoint
        # peft keeps these lists as sets, which it writes in an order that changes with each process's
        # hash seed, with no option to sort them: sorted here, the file is the same from run to run.
        for field in ("target_modules", "exclude_modules"):
            if isinstance(getattr(adapter, field), set):
                setattr(adapter, field, sorted(getattr(adapter, field)))
    # No embedding layer is trained: peft's default ("auto") would look the base model up on the hub
    # to find out, and warn offline that it could not.
    model.save_pretrained(out_dir, save_embedding_layers=False)


def load_classifier(
    model_dir: Path,
) -> tuple[PeftModel | PreTrainedModel, PreTrainedTokenizerBase, TextNormalization, float]:
    """Reload what `save_classifier` wrote, ready for inference: model, tokenizer, normalisation, T."""
    model_dir = Path(model_dir)
    if not (model_dir / BASE_SUBDIR / "config.json").is_file():
        raise FinsentError(f"{model_dir}: no trained model here ({BASE_SUBDIR}/config.json is missing)")
    model = _quiet_load(AutoModelForSequenceClassification.from_pretrained, model_dir / BASE_SUBDIR)
    if (model_dir / "adapter_config.json").is_file():
        model = PeftModel.from_pretrained(model, model_dir)
    model.eval()
    return model, *load_text_processing(model_dir), load_temperature(model_dir)
