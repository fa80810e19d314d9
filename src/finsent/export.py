"""ONNX export: the LoRA adapter merged into the encoder, exported to ONNX, then quantized to int8."""

import copy
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel

from finsent.config import PROBABILITY_COLUMNS, Backend, ExportParams, MinAgreement
from finsent.errors import FinsentError
from finsent.inference.predictors import (
    FP32_FILE,
    INT8_FILES,
    Int8Weights,
    OnnxPredictor,
    OpenVinoPredictor,
    Runtime,
    TorchPredictor,
    choose_runtime,
    onnx_file,
)
from finsent.metrics import headline_metrics
from finsent.quantization import quantize_int8, smooth_activations, unsigned_copy
from finsent.strict_csv import read_csv_frame
from finsent.temperature import save_temperature
from finsent.text import save_text_processing

# Two texts of different lengths, so that neither the batch nor the sequence axis is traced as fixed.
_SAMPLE_TEXTS = [
    "$AAPL beats estimates",
    "Fed holds rates steady as inflation cools, markets rally into the close",
]

# What tracing transformers' models warns of, checked not to apply here (none a user can act on), as
# (category, message, module) for warnings.filterwarnings:
_TRACING_WARNINGS = [
    # Shapes compared in Python, traced as constants: the padding of the 2D mask to the keys' length
    # (always 0: the mask is as long as the input) and SDPA's causal test (always false: a mask is given).
    (
        torch.jit.TracerWarning,
        "Converting a tensor to a Python boolean",
        r"transformers\.(masking_utils|integrations\.sdpa_attention)",
    ),
    # DeBERTa-v2 takes the square root of its head size, a constant, through torch.tensor.
    (
        torch.jit.TracerWarning,
        "torch.tensor results are registered as constants",
        r"transformers\.models\.deberta_v2\.",
    ),
    (UserWarning, "To copy construct from a tensor", r"transformers\.models\.deberta_v2\."),
    # MPNet's embedding checks its padding index against the table's size, a constant. Importing torch
    # hides tracer warnings from torch's own modules, but warning filters set around an import (pytest
    # sets them per test) can drop that.
    (torch.jit.TracerWarning, "Converting a tensor to a Python boolean", r"torch\.nn\.functional"),
    # The padding mask is indexed with aranges: no negative index, the case this warns of.
    (UserWarning, "Exporting aten::index operator of advanced indexing", r"torch\.onnx\."),
]


class _Logits(torch.nn.Module):
    """The classifier with positional tensor inputs, named by `input_names` (the tokenizer's: MPNet has
    no token_type_ids), and its logits, shape (batch, len(LABELS)), as the one output."""

    def __init__(self, model: PreTrainedModel, input_names: list[str]):
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs):
        return self.model(**dict(zip(self.input_names, inputs, strict=True))).logits


def export_onnx(model: PreTrainedModel, tokenizer, out_file: Path) -> None:
    """Write `model` as one ONNX file (weights inside) with dynamic batch and sequence axes.

    The TorchScript exporter (dynamo=False): ONNX Runtime's quantizer fails on the shapes that the dynamo
    exporter records in its graph, and its node names (/model/bert/encoder/layer.0/...) name the layers.
    """
    sample = tokenizer(_SAMPLE_TEXTS, padding=True, return_tensors="pt")
    names = list(sample)
    with warnings.catch_warnings():
        for category, message, module in _TRACING_WARNINGS:
            warnings.filterwarnings("ignore", message, category, module)
        torch.onnx.export(
            _Logits(model, names).eval(),
            tuple(sample[name] for name in names),
            out_file,
            input_names=names,
            output_names=["logits"],
            dynamic_axes={**{name: {0: "batch", 1: "sequence"} for name in names}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def progress(step: str) -> None:
    """One line on stderr as each step starts: the stage runs for minutes on a CPU."""
    print(f"export: {step}", file=sys.stderr, flush=True)


def fidelity(probabilities: np.ndarray, expected: np.ndarray) -> dict[str, float]:
    """How closely one runtime's class probabilities follow the reference's on the same texts."""
    difference = np.abs(probabilities - expected)
    return {
        "agreement_with_pytorch": float((probabilities.argmax(axis=1) == expected.argmax(axis=1)).mean()),
        "max_abs_probability_difference": float(difference.max()),
        "mean_abs_probability_difference": float(difference.mean()),
    }


COMPARED: dict[str, tuple[Backend, Runtime, Int8Weights]] = {
    "onnx_fp32": ("onnx_fp32", "onnxruntime", "auto"),
    "onnx_int8": ("onnx_int8", "auto", "auto"),
    "onnx_int8_onnxruntime": ("onnx_int8", "onnxruntime", "signed"),
    "onnx_int8_unsigned": ("onnx_int8", "onnxruntime", "unsigned"),
}
"""Each exported model compared with PyTorch (metrics/export.json's keys): backend, runtime, int8 file.
onnx_int8 is the int8 model as served here (`load_predictor`'s choices: OpenVINO where installed)."""

GATES = {name: "onnx_fp32" if name == "onnx_fp32" else "onnx_int8" for name in COMPARED}
"""The `export.min_agreement` key that each compared model must meet."""


def runtime_metrics(
    name: str,
    exported_dir: Path,
    batch_sizes: list[int],
    validation: pd.DataFrame,
    expected: np.ndarray,
    dev: tuple[list[str], np.ndarray] | None = None,
) -> dict:
    """One exported model (`COMPARED[name]`) against PyTorch's probabilities: on validation at each of
    `batch_sizes`, as "batch_1", "batch_32", ..., each but the smallest with the labels that batching
    changed from the smallest's; with `dev` (texts, PyTorch's probabilities), on dev alone too (as the
    API sees a text; what the export params are tuned on); the runtime, and the file's size.
    """
    backend, runtime, int8_weights = COMPARED[name]
    runtime = choose_runtime(runtime, "cpu")
    model_file = onnx_file(backend, exported_dir, int8_weights, runtime)
    file_name = model_file.name
    make = OpenVinoPredictor if runtime == "openvino" else OnnxPredictor
    texts, labels = validation["text"].tolist(), validation["label"].to_numpy()
    predictors = {batch_size: make(model_file, batch_size) for batch_size in batch_sizes}
    probabilities = {}
    for batch_size, predictor in predictors.items():
        progress(f"{file_name} on {runtime}, {len(texts):,} validation texts in batches of {batch_size}")
        probabilities[batch_size] = predictor.predict_proba(texts)
    metrics: dict = {
        "runtime": runtime,
        "file": file_name,
        "file_mb": round(model_file.stat().st_size / 2**20, 2),
    }
    smallest = min(batch_sizes)
    for batch_size, batch_probabilities in probabilities.items():
        metrics[f"batch_{batch_size}"] = {
            **fidelity(batch_probabilities, expected),
            **headline_metrics(labels, batch_probabilities),
        }
        if batch_size != smallest:
            changed = batch_probabilities.argmax(axis=1) != probabilities[smallest].argmax(axis=1)
            metrics[f"batch_{batch_size}"][f"labels_differing_from_batch_{smallest}"] = int(changed.sum())
    if dev is not None:
        dev_texts, expected_dev = dev
        progress(f"{file_name} on {runtime}, {len(dev_texts):,} dev texts in batches of {smallest}")
        metrics["dev"] = fidelity(predictors[smallest].predict_proba(dev_texts), expected_dev)
    return metrics


def check_agreement(metrics: dict, batch_sizes: dict[str, list[int]], min_agreement: MinAgreement) -> None:
    """Raise FinsentError, naming the params key, when an ONNX model, at one of the batch sizes it was
    compared at (`batch_sizes`, by model), gives PyTorch's label on fewer validation texts than
    `min_agreement` asks."""
    for name, sizes in batch_sizes.items():
        key = GATES[name]
        minimum = getattr(min_agreement, key)
        for batch_size in sizes:
            agreement = metrics[name][f"batch_{batch_size}"]["agreement_with_pytorch"]
            if agreement < minimum:
                raise FinsentError(
                    f"export.min_agreement.{key}: in batches of {batch_size}, the {name} model gives "
                    f"PyTorch's label on {agreement:.2%} of the validation texts, under the "
                    f"{minimum:.2%} asked"
                )


def write_onnx_models(
    reference: TorchPredictor, out_dir: Path, calibration_texts: list[str], params: ExportParams
) -> None:
    """`reference` as ONNX fp32 and int8 (its weights signed, and the same weights unsigned) in
    `out_dir`, with its tokenizer, text normalisation and temperature (the ONNX models give logits:
    predictors apply T).

    The int8 model is quantized from a smoothed copy (unless `params.smoothing_alpha` is None); both the
    smoothing and the int8 activation ranges are calibrated on `params.calibration_texts` texts spread
    evenly over `calibration_texts`. `reference` is left as it was: a copy of its model is smoothed.
    """
    save_text_processing(out_dir, reference.tokenizer, reference.normalize)
    save_temperature(out_dir, reference.temperature)
    model = reference.model
    fp32_file, int8_file = out_dir / FP32_FILE, out_dir / INT8_FILES["signed"]
    progress(f"exporting {fp32_file.name}")
    export_onnx(model, reference.tokenizer, fp32_file)
    step = max(1, len(calibration_texts) // params.calibration_texts)
    calibration = reference.normalize(calibration_texts[::step][: params.calibration_texts])
    progress(f"quantizing {int8_file.name}, calibrated on {len(calibration):,} training texts")
    if params.smoothing_alpha is None:
        quantize_int8(fp32_file, int8_file, reference.tokenizer, calibration, params.keep_fp32)
    else:
        # Smoothing rescales the weights in place: on a copy, so that `reference` goes on predicting as
        # the model that the ONNX models are compared with.
        smoothed = copy.deepcopy(model)
        smooth_activations(smoothed, reference.tokenizer, calibration, params.smoothing_alpha)
        smoothed_file = out_dir / "smoothed_fp32.onnx"  # quantizer input only, in atomic_dir's staging
        export_onnx(smoothed, reference.tokenizer, smoothed_file)
        quantize_int8(smoothed_file, int8_file, reference.tokenizer, calibration, params.keep_fp32)
        smoothed_file.unlink()
    progress(f"writing {INT8_FILES['unsigned']}")
    unsigned_copy(int8_file, out_dir / INT8_FILES["unsigned"])


def reference_probabilities(predictions_file: Path, validation: pd.DataFrame) -> np.ndarray:
    """The evaluate stage's class probabilities on `validation` (its predictions table), in its row order.

    Raises FinsentError, naming the file, unless it holds exactly the rows of `validation`, in the same
    order, with a finite probability for every class.
    """
    columns = list(PROBABILITY_COLUMNS)
    try:
        predictions = read_csv_frame(predictions_file, predictions_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FinsentError(f"{predictions_file}: no such file (run `dvc repro evaluate`)") from None
    except UnicodeDecodeError as error:
        raise FinsentError(f"{predictions_file}: not UTF-8 (byte {error.start})") from None
    missing = [column for column in ["id", *columns] if column not in predictions.columns]
    if missing:
        raise FinsentError(f"{predictions_file}: no column {', '.join(missing)} (run `dvc repro evaluate`)")
    if predictions["id"].tolist() != validation["id"].astype(str).tolist():
        raise FinsentError(
            f"{predictions_file}: its rows are not the validation split's, in its order ({len(predictions)} "
            f"rows against {len(validation)}; run `dvc repro evaluate`)"
        )
    probabilities = pd.DataFrame(
        {column: pd.to_numeric(predictions[column], errors="coerce") for column in columns}
    )
    if not np.isfinite(probabilities.to_numpy()).all():
        raise FinsentError(
            f"{predictions_file}: a probability is missing or not a number (run `dvc repro evaluate`)"
        )
    return probabilities.to_numpy(dtype=np.float32)


def export_classifier(
    model_dir: Path,
    out_dir: Path,
    validation: pd.DataFrame,
    expected: np.ndarray,
    dev_texts: list[str],
    calibration_texts: list[str],
    params: ExportParams,
) -> dict:
    """Export `model_dir` into `out_dir` (fp32 and int8 ONNX, tokenizer); metrics of both against PyTorch.

    The ONNX models are written by `write_onnx_models`, calibrated on `calibration_texts` (training
    texts: the compared texts stay unseen). `expected` holds PyTorch's probabilities on `validation`,
    the evaluate stage's own (they are not computed again). The int8 model is compared on `validation`
    alone and in batches of `params.batch_size`, and on `dev_texts` alone (fidelity only: what the
    export params are tuned on), on the runtime that serves it (`COMPARED`); the same file on ONNX
    Runtime, its unsigned copy and the fp32 model in batches of `params.batch_size` (padded, so the
    masking is checked too). Each runs as this CPU's int8 products compute it.

    Raises FinsentError when an ONNX model's labels, at a batch size it is compared at, agree with
    PyTorch's on fewer validation texts than `params.min_agreement` asks (inside `atomic_dir`, nothing
    is then kept).
    """
    labels = validation["label"].to_numpy()
    reference = TorchPredictor.from_dir(model_dir, params.batch_size)
    progress(f"PyTorch on {len(dev_texts):,} dev texts")
    expected_dev = reference.predict_proba(dev_texts)
    metrics = {"pytorch": headline_metrics(labels, expected)}
    write_onnx_models(reference, out_dir, calibration_texts, params)
    batch_sizes = {name: [params.batch_size] for name in COMPARED} | {
        "onnx_int8": sorted({1, params.batch_size})
    }
    for name in COMPARED:
        dev = (dev_texts, expected_dev) if name == "onnx_int8" else None
        metrics[name] = runtime_metrics(name, out_dir, batch_sizes[name], validation, expected, dev)
    check_agreement(metrics, batch_sizes, params.min_agreement)
    return metrics
