"""Typed access to params.yaml: every knob of the pipeline, validated, with errors naming the key."""

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.error import MarkedYAMLError

from finsent.errors import FinsentError

LABELS = ("Bearish", "Bullish", "Neutral")
"""The data set's classes, by label id."""
Label = Literal[LABELS]
PROBABILITY_COLUMNS = tuple(f"p_{name}" for name in LABELS)
"""Each class's probability, as every table of predictions names it (evaluate, export, predict)."""

BACKENDS = ("onnx_int8", "onnx_fp32", "pytorch")
"""The runtimes a trained model is served on: ONNX Runtime (exported int8 or fp32) or PyTorch."""
Backend = Literal[BACKENDS]


ModelT = TypeVar("ModelT", bound=BaseModel)


class _Section(BaseModel):
    # No NaN or infinity: `learning_rate: .inf` is a typo, not a setting.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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
    # Encoder layers kept, evenly spaced from the first to the last (modeling.kept_layers); None: all.
    layers: int | None = Field(gt=0)


class TokenizeParams(_Section):
    max_length: int = Field(gt=8, le=4096)
    # The word that replaces each link (https://...) before tokenizing; null keeps links (see text.py).
    url_replacement: str | None
    # The word that replaces each cashtag ($AAPL) before tokenizing; null keeps them.
    cashtag_replacement: str | None


class TokenizeStageParams(TokenizeParams):
    """The tokenize stage's section: the served model's tokenization, and which train rows it keeps."""

    # true: the train rows the audit stage doubts (data/audit/train.csv) are left out of the training
    # set, with their augmented copies; dev is never changed, so that it still decides.
    drop_doubtful: bool


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
    num_processes: int = Field(gt=0)
    weight_decay: float = Field(ge=0)
    # Loss: "balanced" weighs each class by the inverse of its share of train (Neutral is 65% of it).
    class_weights: Literal["none", "balanced"]
    label_smoothing: float = Field(ge=0, lt=1)
    # Focal loss's gamma: each tweet's loss scaled by (1 - p)^gamma, p its class's probability, so
    # that the many easy (mostly Neutral) tweets weigh less; 0 is plain cross-entropy.
    focal_gamma: float = Field(ge=0)
    seed: int
    # bf16 autocast on a CPU that computes in bf16 natively (AVX512-BF16 or AMX); on others it is many
    # times slower than fp32, so it stays off there. GPUs use bf16 (or fp16) whatever this says.
    cpu_bf16: bool

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


class AugmentParams(_Section):
    # Copies of train that the teacher labels, each changed by `method` (src/finsent/augmentation.py),
    # `rate` the share of its words changed: texts beyond the training set, for distillation.
    copies: int = Field(ge=0)
    method: Literal["word_dropout", "span_deletion", "mask", "swap", "join"]
    rate: float = Field(gt=0, lt=1)
    seed: int


class _OwnTraining(_Section):
    """A stage that trains its own models (teacher, audit) with its own `train` section, in one process."""

    train: TrainParams

    @field_validator("train")
    @classmethod
    def _one_process(cls, value: TrainParams) -> TrainParams:
        if value.num_processes != 1:
            raise ValueError("this stage trains in one process (num_processes: 1)")
        return value


class TeacherParams(_OwnTraining):
    """A stronger model, fine-tuned once on train; the train stage distils its class probabilities."""

    checkpoint: str
    revision: str
    # Its own tokenization: the tokenize section is the served model's, and changing it must not
    # retrain the teacher.
    tokenize: TokenizeParams
    lora: LoraParams
    train: TrainParams
    augment: AugmentParams
    # Texts a batch when the trained teacher labels train, dev, validation and the augmented copies.
    label_batch_size: int = Field(gt=0)
    # Teacher runs, seeds train.seed, train.seed + 1, ...: an ensemble whose class probabilities,
    # averaged, are the soft labels.
    runs: int = Field(gt=0)


class AuditParams(_OwnTraining):
    """The label audit: K-fold training on the labels alone, then confident learning (cleanlab) over each
    train row's out-of-fold class probabilities and validation's (the mean of the fold models')."""

    checkpoint: str
    revision: str
    # Its own tokenization and training, as the teacher's: changing the served model's never reruns it.
    tokenize: TokenizeParams
    lora: LoraParams
    train: TrainParams
    # Folds of train, stratified: each fold's rows are scored by the model trained on the others.
    folds: int = Field(ge=2)
    fold_seed: int  # which rows go to which fold
    # Texts a batch when a fold model scores its held-out rows and validation.
    label_batch_size: int = Field(gt=0)


class DistillParams(_Section):
    """Knowledge distillation (Hinton et al., 2015): loss = alpha * CE(labels) + (1 - alpha) * T^2 *
    KL(teacher_T || student_T), with both distributions softened by the temperature T."""

    # false: the teacher is not used, and the train stage is plain fine-tuning on the labels.
    enabled: bool
    alpha: float = Field(ge=0, le=1)
    temperature: float = Field(gt=0)
    # How many of the teacher's augmented copies of train the student also trains on (no hard label).
    augmented_copies: int = Field(ge=0)


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
    # Regular expressions over the ONNX node names of linear layers that stay fp32 in the int8 model.
    keep_fp32: list[str]
    # Export fails, writing nothing, when an ONNX model's labels agree less often than this with PyTorch's.
    min_agreement: MinAgreement


class Params(_Section):
    data: DataParams
    model: ModelParams
    tokenize: TokenizeStageParams
    lora: LoraParams
    train: TrainParams
    teacher: TeacherParams
    audit: AuditParams
    distill: DistillParams
    evaluate: EvaluateParams
    export: ExportParams


TRAINING_SECTIONS: tuple[str, ...] = ("model", "tokenize", "lora", "train", "distill", "teacher")
"""The params that the train stage and those before it read: what a trained model depends on.

The train stage records them beside its metrics (metrics/train/params.yaml), the teacher's only when it
distils; sweeps compare them.
"""


def read_yaml(path: Path):
    """The content of a YAML file; what makes it unreadable, as one FinsentError naming the file."""
    try:
        return parse_yaml(Path(path).read_bytes(), str(path))
    except FileNotFoundError:
        raise FinsentError(f"{path}: file not found") from None


def parse_yaml(content: bytes, source: str):
    """YAML (or JSON) read from `source` (a file, or `REV:PATH`); what makes it unreadable, as one
    FinsentError naming `source`.

    ruamel.yaml reads YAML 1.2, so `1e-3` (as `dvc exp run -S` writes it) is a float; PyYAML would
    read it as a string (treeverse/dvc#5971).
    """
    try:
        return YAML(typ="safe").load(content.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise FinsentError(f"{source}: not UTF-8 (byte {error.start})") from None
    except MarkedYAMLError as error:
        raise FinsentError(f"{source}, line {error.problem_mark.line + 1}: {error.problem}") from None
    except YAMLError as error:
        raise FinsentError(f"{source}: not valid YAML ({error.__class__.__name__})") from None


def validated(model: type[ModelT], raw, path: Path) -> ModelT:
    """`raw` as a `model`, or a FinsentError naming the file and the first bad key, as
    `params.yaml: train.epochs: missing` or `cases.yaml: directional[3].Bullish: ...`."""
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        parts = [
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"] if part != "[key]"
        ]
        where = "".join(parts).lstrip(".")
        problem = "missing" if first["type"] == "missing" else first["msg"]
        raise FinsentError(f"{path}: {where}: {problem}" if where else f"{path}: {problem}") from None


def load_params(path: Path = Path("params.yaml")) -> Params:
    """Read and validate params.yaml."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise FinsentError(f"{path}: not a mapping of sections (data, model, tokenize, ...)")
    for section in ("inference", "serve"):  # not pipeline params: finsent.inference reads them
        raw.pop(section, None)
    return validated(Params, raw, path)
