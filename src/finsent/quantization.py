"""Int8 copies of the exported classifier: activation smoothing, then ONNX Runtime's static quantization.

Static: every activation that enters an int8 matrix product has one range, fixed at export from the
calibration texts. A text's result then depends on that text alone, not on the texts batched with it nor
on the padding they bring (the attention mask gives each padded position exactly 0 weight). Dynamic
quantization, used before, took one range per batch: 11 of 2,388 validation labels changed between
batch 1 and batch 32.

A BERT encoder's activations have a few channels far larger than the rest, so one range leaves the others
a handful of levels: quantizing every linear layer of the committed model as it is (dynamically) flipped
1.16% of the dev labels. SmoothQuant (Xiao et al., 2023) moves that spread from the activations into the
weights, whose ranges are per output channel: input channel j of a linear layer is divided by s_j and its
weight column multiplied by s_j, which leaves the fp32 result unchanged. ONNX Runtime applies it only
through Intel Neural Compressor, so the few lines of it are written here, on the PyTorch model before
export.
"""

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from transformers import PreTrainedModel, PreTrainedTokenizerBase


class SmoothedLinear(torch.nn.Module):
    """`linear` with its input divided by `scale` per channel and its weight columns multiplied by it."""

    def __init__(self, linear: torch.nn.Linear, scale: torch.Tensor):
        super().__init__()
        self.linear = linear
        with torch.no_grad():
            linear.weight.mul_(scale)
        self.register_buffer("inverse_scale", 1 / scale)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.linear(inputs * self.inverse_scale)


def input_channel_maxima(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int = 32
) -> dict[str, torch.Tensor]:
    """The largest absolute input of every channel of each linear layer of `model`, over `texts`."""
    maxima: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(module, inputs, output):
            channel_max = inputs[0].detach().abs().flatten(end_dim=-2).amax(dim=0)
            maxima[name] = torch.maximum(maxima[name], channel_max) if name in maxima else channel_max

        return hook

    hooks = [
        module.register_forward_hook(record(name))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    ]
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(
                    texts[start : start + batch_size], truncation=True, padding=True, return_tensors="pt"
                )
                model(**batch)
    finally:
        for hook in hooks:
            hook.remove()
    return maxima


def smooth_activations(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], alpha: float
) -> None:
    """Wrap each linear layer of `model` in a `SmoothedLinear`, in place, calibrated on `texts`.

    s_j = max|x_j|^alpha / max|w_j|^(1 - alpha): alpha 1 brings every input channel to the same range,
    alpha 0 every weight column.
    """
    for name, activation_max in input_channel_maxima(model, tokenizer, texts).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child)
        weight_max = linear.weight.detach().abs().amax(dim=0)
        tiny = torch.finfo(torch.float32).tiny
        scale = activation_max.clamp(min=tiny) ** alpha / weight_max.clamp(min=tiny) ** (1 - alpha)
        setattr(parent, child, SmoothedLinear(linear, scale.clamp(min=1e-5)))


class _CalibrationInputs(CalibrationDataReader):
    """The model's inputs for each calibration text alone (no padding enters the ranges), tokenized as
    the predictors tokenize."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, texts: list[str], input_names: list[str]):
        self._inputs: Iterator[dict] = (
            {name: encoding[name] for name in input_names}
            for encoding in (tokenizer(text, truncation=True, return_tensors="np") for text in texts)
        )

    def get_next(self) -> dict | None:
        return next(self._inputs, None)


def weight_nodes(model: onnx.ModelProto, keep_fp32: list[str] = ()) -> list[str]:
    """The linear layers' MatMuls: the nodes that multiply an activation by a stored weight.

    The MatMuls between two activations (attention scores, and their weighted sum of values) stay fp32;
    ONNX Runtime's option for that, MatMulConstBOnly, is ignored in the QDQ format. The embedding tables
    stay fp32 too: a lookup computes nothing, so int8 there would only make the file smaller, and on dev
    it added a quarter of the int8 model's mean probability error (0.0075 against 0.0056). The nodes
    whose name matches a regular expression of `keep_fp32` stay fp32 too.
    """
    weights = {initializer.name for initializer in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul"
        and node.input[1] in weights
        and not any(re.search(pattern, node.name) for pattern in keep_fp32)
    ]


def quantize_int8(
    fp32_file: Path,
    int8_file: Path,
    tokenizer: PreTrainedTokenizerBase,
    calibration_texts: list[str],
    keep_fp32: list[str] = (),
) -> None:
    """Static quantization of the linear layers of `fp32_file` into `int8_file`.

    Linear weights are signed 8-bit, symmetric, with a range per output channel; activations unsigned
    8-bit (u8 x s8 products: the exact, fast int8 instruction of x86 CPUs with VNNI or AMX;
    `finsent.inference.cpu`). `unsigned_copy` stores the same weights unsigned, for CPUs without them.
    The embedding tables stay fp32 (see `weight_nodes`). Each product's input is uint8 with one range:
    the smallest and largest value it takes on `calibration_texts` (MinMax). The smoothing scales come
    from the same texts' channel maxima, and MinMax keeps those maxima in range, where a percentile or
    entropy range clips the outliers that smoothing kept; ONNX Runtime's histogram calibrators
    (percentile, entropy, distribution) also stack every activation of every text, which needs one
    padded length for all and the memory for all. The products' outputs stay fp32 (ONNX Runtime fuses
    each into MatMulIntegerToFloat), as after dynamic quantization: no second rounding.
    """
    with tempfile.TemporaryDirectory(prefix="finsent-quantize-") as scratch:
        # Shape inference and graph optimization, as ONNX Runtime asks before quantizing. auto_merge: the
        # position embeddings are sliced to min(max_position_embeddings, sequence), which the symbolic
        # shape inference cannot prove equal to the sequence length without it.
        prepared_file = Path(scratch) / "prepared.onnx"
        quant_pre_process(fp32_file, prepared_file, auto_merge=True)
        prepared = onnx.load(prepared_file)
        quantize_static(
            prepared_file,
            int8_file,
            _CalibrationInputs(tokenizer, calibration_texts, [node.name for node in prepared.graph.input]),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=weight_nodes(prepared, keep_fp32),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"], "WeightSymmetric": True},
        )


def unsigned_copy(signed_file: Path, unsigned_file: Path) -> None:
    """`signed_file` with every signed 8-bit tensor (the weights and their zero points) stored unsigned,
    shifted by 128: each weight dequantizes to exactly the same value, so the model computes the same
    function.

    For x86 CPUs with AVX2 alone, whose u8 x s8 instruction sums pairs of products in 16 bits that
    saturate; ONNX Runtime computes u8 x u8 there without saturation. ONNX Runtime's own advice for
    them, 7-bit weights (`reduce_range`), costs precision everywhere.
    """
    model = onnx.load(signed_file)
    dequantized = {
        node.input[i] for node in model.graph.node if node.op_type == "DequantizeLinear" for i in (0, 2)
    }
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.data_type != onnx.TensorProto.INT8:
            continue
        if tensor.name not in dequantized:
            raise ValueError(f"{signed_file}: {tensor.name} is int8 but not a quantized weight")
        values = numpy_helper.to_array(tensor).astype(np.int16) + 128
        model.graph.initializer[index].CopyFrom(numpy_helper.from_array(values.astype(np.uint8), tensor.name))
    onnx.save(model, unsigned_file)
