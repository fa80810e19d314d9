"""ONNX export: the LoRA adapter merged into the encoder, exported to ONNX, then quantized to int8."""

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from peft import PeftModel
from transformers import PreTrainedModel

from finsent.config import ExportParams
from finsent.errors import FinsentError
from finsent.metrics import headline_metrics
from finsent.predictors import ONNX_FILES, OnnxPredictor, TorchPredictor
from finsent.quantization import quantize_int8, smooth_activations
from finsent.text import save_text_processing

# Two texts of different lengths, so that neither the batch nor the sequence axis is traced as fixed.
_SAMPLE_TEXTS = [
    "$AAPL beats estimates",
    "Fed holds rates steady as inflation cools, markets rally into the close",
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


def merged_model(predictor: TorchPredictor) -> PreTrainedModel:
    """The encoder with the LoRA weights folded into its linear layers and the trained head in place."""
    model = predictor.model
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    return model.eval()


def export_onnx(model: PreTrainedModel, tokenizer, out_file: Path) -> None:
    """Write `model` as one ONNX file (weights inside) with dynamic batch and sequence axes.

    The TorchScript exporter (dynamo=False): ONNX Runtime's quantizer fails on the shapes that the dynamo
    exporter records in its graph, and its node names (/model/bert/encoder/layer.0/...) name the layers.
    """
    sample = tokenizer(_SAMPLE_TEXTS, padding=True, return_tensors="pt")
    names = list(sample)
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


def fidelity(probabilities: np.ndarray, expected: np.ndarray) -> dict[str, float]:
    """How closely one runtime's class probabilities follow the reference's on the same texts."""
    difference = np.abs(probabilities - expected)
    return {
        "agreement_with_pytorch": float((probabilities.argmax(axis=1) == expected.argmax(axis=1)).mean()),
        "max_abs_probability_difference": float(difference.max()),
        "mean_abs_probability_difference": float(difference.mean()),
    }


def export_classifier(
    model_dir: Path,
    out_dir: Path,
    validation: pd.DataFrame,
    dev_texts: list[str],
    calibration_texts: list[str],
    params: ExportParams,
) -> dict:
    """Export `model_dir` into `out_dir` (fp32 and int8 ONNX, tokenizer); metrics of both against PyTorch.

    The int8 model is quantized from a smoothed copy (unless `params.smoothing_alpha` is None),
    calibrated on `params.calibration_texts` texts spread evenly over `calibration_texts` (training
    texts: the compared texts stay unseen). Each ONNX model is compared on `validation` (metrics, and
    the gate) and on `dev_texts` (fidelity alone: what the export params are tuned on).

    Raises FinsentError when an ONNX model's labels agree with PyTorch's on fewer validation texts than
    `params.min_agreement` asks (inside `atomic_dir`, nothing is then kept).
    """
    texts, labels = validation["text"].tolist(), validation["label"].to_numpy()
    reference = TorchPredictor.from_dir(model_dir, params.batch_size)
    # Before merging, which rewrites the model's layers in place.
    expected, expected_dev = reference.predict_proba(texts), reference.predict_proba(dev_texts)
    metrics = {"pytorch": headline_metrics(labels, expected)}
    save_text_processing(out_dir, reference.tokenizer, reference.normalize)
    model = merged_model(reference)
    export_onnx(model, reference.tokenizer, out_dir / ONNX_FILES["onnx_fp32"])
    if params.smoothing_alpha is None:
        quantize_int8(out_dir / ONNX_FILES["onnx_fp32"], out_dir / ONNX_FILES["onnx_int8"])
    else:
        step = max(1, len(calibration_texts) // params.calibration_texts)
        calibration = reference.normalize(calibration_texts[::step][: params.calibration_texts])
        smooth_activations(model, reference.tokenizer, calibration, params.smoothing_alpha)
        smoothed_file = out_dir / "smoothed_fp32.onnx"  # quantizer input only, in atomic_dir's staging
        export_onnx(model, reference.tokenizer, smoothed_file)
        quantize_int8(smoothed_file, out_dir / ONNX_FILES["onnx_int8"])
        smoothed_file.unlink()
    for backend, file_name in ONNX_FILES.items():
        predictor = OnnxPredictor(out_dir / file_name, params.batch_size)
        probabilities = predictor.predict_proba(texts)
        metrics[backend] = {
            **fidelity(probabilities, expected),
            **headline_metrics(labels, probabilities),
            "file_mb": round((out_dir / file_name).stat().st_size / 2**20, 2),
            "dev": fidelity(predictor.predict_proba(dev_texts), expected_dev),
        }
    for backend, minimum in params.min_agreement.model_dump().items():
        agreement = metrics[backend]["agreement_with_pytorch"]
        if agreement < minimum:
            raise FinsentError(
                f"export.min_agreement.{backend}: the {backend} model gives PyTorch's label on "
                f"{agreement:.2%} of the validation texts, under the {minimum:.2%} asked"
            )
    return metrics
