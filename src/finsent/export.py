"""ONNX export: the LoRA adapter merged into the encoder, exported to ONNX, then quantized to int8."""

from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from peft import PeftModel
from transformers import PreTrainedModel

from finsent.backends import ONNX_FILES, OnnxPredictor, TorchPredictor
from finsent.config import ExportParams
from finsent.errors import FinsentError
from finsent.metrics import headline_metrics

# Two texts of different lengths, so that neither the batch nor the sequence axis is traced as fixed.
_SAMPLE_TEXTS = [
    "$AAPL beats estimates",
    "Fed holds rates steady as inflation cools, markets rally into the close",
]


class _Logits(torch.nn.Module):
    """The classifier with tensor inputs and its logits, shape (batch, len(LABELS)), as the one output."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).logits


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
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in sample]
    torch.onnx.export(
        _Logits(model).eval(),
        tuple(sample[name] for name in names),
        out_file,
        input_names=names,
        output_names=["logits"],
        dynamic_axes={**{name: {0: "batch", 1: "sequence"} for name in names}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def quantize_int8(fp32_file: Path, int8_file: Path) -> None:
    """Dynamic quantization: int8 weights (a scale per output channel), activations quantized on the fly.

    The feed-forward blocks (intermediate and output layers) stay fp32; the attention projections are
    quantized. One activation scale per tensor cannot hold the outliers of the feed-forward activations:
    quantizing the intermediate layers too flipped 1.05% of the validation labels of the committed model
    (on a 2-core AMD EPYC), over the 1% that `export.min_agreement` allows; without them, 0.38%
    (metrics/export.json). Weights use 7 bits (reduce_range): x86 CPUs without VNNI saturate in the
    u8 x s8 products otherwise.
    """
    graph = onnx.load(fp32_file).graph
    feed_forward = [
        node.name
        for node in graph.node
        if node.op_type == "MatMul"
        and ("/intermediate/dense/" in node.name or "/output/dense/" in node.name)
        and "/attention/" not in node.name
    ]
    quantize_dynamic(
        fp32_file,
        int8_file,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
        nodes_to_exclude=feed_forward,
    )


def export_classifier(
    model_dir: Path, out_dir: Path, texts: list[str], labels: np.ndarray, params: ExportParams
) -> dict:
    """Export `model_dir` into `out_dir` (fp32 and int8 ONNX, tokenizer); metrics of both against PyTorch.

    Raises FinsentError when an ONNX model's labels agree with PyTorch's on fewer of `texts` than
    `params.min_agreement` asks (inside `atomic_dir`, nothing is then kept).
    """
    reference = TorchPredictor.from_dir(model_dir, params.batch_size)
    expected = reference.predict_proba(texts)  # before merging, which rewrites the model's layers in place
    metrics = {"pytorch": headline_metrics(labels, expected)}
    reference.tokenizer.save_pretrained(out_dir)
    reference.normalize.save(out_dir)
    export_onnx(merged_model(reference), reference.tokenizer, out_dir / ONNX_FILES["onnx_fp32"])
    quantize_int8(out_dir / ONNX_FILES["onnx_fp32"], out_dir / ONNX_FILES["onnx_int8"])
    for backend, file_name in ONNX_FILES.items():
        probabilities = OnnxPredictor(out_dir / file_name, params.batch_size).predict_proba(texts)
        metrics[backend] = {
            "agreement_with_pytorch": float((probabilities.argmax(axis=1) == expected.argmax(axis=1)).mean()),
            "max_abs_probability_difference": float(np.abs(probabilities - expected).max()),
            **headline_metrics(labels, probabilities),
            "file_mb": round((out_dir / file_name).stat().st_size / 2**20, 2),
        }
    for backend, minimum in params.min_agreement.model_dump().items():
        agreement = metrics[backend]["agreement_with_pytorch"]
        if agreement < minimum:
            raise FinsentError(
                f"export.min_agreement.{backend}: the {backend} model gives PyTorch's label on "
                f"{agreement:.2%} of the texts, under the {minimum:.2%} asked"
            )
    return metrics
