"""Typed access to params.yaml: every knob of the pipeline, validated, with errors naming the key."""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from ruamel.yaml import YAML, YAMLError

from finsent.errors import FinsentError

LABELS = ("Bearish", "Bullish", "Neutral")
"""The data set's classes, by label id."""
Label = Literal[LABELS]

BACKENDS = ("onnx_int8", "onnx_fp32", "pytorch")
"""The runtimes a trained model is served on: ONNX Runtime (exported int8 or fp32) or PyTorch."""
Backend = Literal[BACKENDS]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitFingerprint(_Section):
    rows: int = Field(gt=0)
    labels: dict[str, int]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class DataParams(_Section):
    dataset: str
    revision: str
    dev_size: float = Field(gt=0, lt=1)
    seed: int
    fingerprint: dict[Literal["train", "validation"], SplitFingerprint]


class ModelParams(_Section):
    checkpoint: str
    revision: str


class TokenizeParams(_Section):
    max_length: int = Field(gt=8, le=4096)
    # The word that replaces each link (https://...) before tokenizing; null keeps links (see text.py).
    # These two, train.num_processes and train.focal_gamma default to what runs did before the keys
    # existed, so that a run's own record of its params (metrics/train/params.yaml) from an older
    # commit still reads as what it ran.
    url_replacement: str | None = None
    # The word that replaces each cashtag ($AAPL) before tokenizing; null keeps them.
    cashtag_replacement: str | None = None


class LoraParams(_Section):
    # false: full fine-tuning (every weight trained, the rest of this section unused), to show what LoRA costs
    enabled: bool
    r: int = Field(gt=0)
    alpha: float = Field(gt=0)
    dropout: float = Field(ge=0, lt=1)
    # "auto" picks every linear layer of the encoder for the model's architecture (see modeling.py).
    target_modules: Literal["auto"] | list[str]


class TrainParams(_Section):
    learning_rate: float = Field(gt=0)
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"]
    warmup_ratio: float = Field(ge=0, lt=1)
    epochs: int = Field(gt=0)
    batch_size: int = Field(gt=0)  # the global batch, split evenly among the processes
    # Data-parallel processes (torchrun): GPUs, one each, or CPU processes sharing the cores.
    num_processes: int = Field(1, gt=0)
    weight_decay: float = Field(ge=0)
    # Loss: "balanced" weighs each class by the inverse of its share of train (Neutral is 65% of it).
    class_weights: Literal["none", "balanced"]
    label_smoothing: float = Field(ge=0, lt=1)
    # Focal loss's gamma: each tweet's loss scaled by (1 - p)^gamma, p its class's probability, so
    # that the many easy (mostly Neutral) tweets weigh less; 0 is plain cross-entropy.
    focal_gamma: float = Field(0.0, ge=0)
    seed: int

    @field_validator("num_processes")
    @classmethod
    def _splits_the_batch(cls, value: int, info: ValidationInfo) -> int:
        batch_size = info.data.get("batch_size")  # absent when it was itself invalid
        if batch_size is not None and batch_size % value:
            raise ValueError(
                f"train.batch_size {batch_size} (the global batch) "
                f"cannot be split evenly among {value} processes"
            )
        return value


class EvaluateParams(_Section):
    batch_size: int = Field(gt=0)


class MinAgreement(_Section):
    onnx_fp32: float = Field(gt=0, le=1)
    onnx_int8: float = Field(gt=0, le=1)


class ExportParams(_Section):
    batch_size: int = Field(gt=0)
    # int8: SmoothQuant's migration strength (0: weights keep their ranges; 1: activations are evened
    # out); None quantizes the model as it is.
    smoothing_alpha: float | None = Field(ge=0, le=1)
    calibration_texts: int = Field(gt=0)
    # Export fails, writing nothing, when an ONNX model's labels agree less often than this with PyTorch's.
    min_agreement: MinAgreement


class Params(_Section):
    data: DataParams
    model: ModelParams
    tokenize: TokenizeParams
    lora: LoraParams
    train: TrainParams
    evaluate: EvaluateParams
    export: ExportParams


TRAINING_SECTIONS: tuple[str, ...] = ("model", "tokenize", "lora", "train")
"""The params that the train stage and those before it read: what a trained model depends on.

The train stage records them beside its metrics (metrics/train/params.yaml); sweeps compare them.
"""


def load_params(path: Path = Path("params.yaml")) -> Params:
    """Read and validate params.yaml.

    ruamel.yaml reads YAML 1.2, so `1e-3` (as `dvc exp run -S` writes it) is a float; PyYAML would
    read it as a string (treeverse/dvc#5971).
    """
    try:
        raw = YAML(typ="safe").load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FinsentError(f"{path}: file not found") from None
    except YAMLError as error:
        raise FinsentError(f"{path}: not valid YAML ({error.__class__.__name__})") from None
    if isinstance(raw, dict):
        raw.pop("serve", None)  # not a pipeline param: finsent.serving.settings reads it
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise FinsentError(f"{path}: {key}: {first['msg']}") from None
