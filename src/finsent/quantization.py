"""Int8 copy of the exported classifier: activation smoothing, then ONNX Runtime's dynamic quantization.

Dynamic quantization gives each activation tensor one int8 range, computed on the fly. A BERT encoder's
activations have a few channels far larger than the rest, so one range leaves the others a handful of
levels: quantizing every linear layer of the committed model as it is flipped 1.16% of the dev labels.
SmoothQuant (Xiao et al., 2023) moves that spread from the activations into the weights, whose ranges are
per output channel: input channel j of a linear layer is divided by s_j and its weight column multiplied
by s_j, which leaves the fp32 result unchanged. ONNX Runtime applies it only inside static quantization,
through Intel Neural Compressor, so the few lines of it are written here, on the PyTorch model before
export. Measured by `scripts/benchmark_inference.py` in the README: every layer int8, smoothed.
"""

from pathlib import Path

import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
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


def quantize_int8(fp32_file: Path, int8_file: Path) -> None:
    """Dynamic quantization of every MatMul with constant weights: int8 weights, a scale per output
    channel. Weights use 7 bits (reduce_range): x86 CPUs without VNNI saturate in the u8 x s8 products
    otherwise, so the exported model is as good on them as on the CPU that exported it.
    """
    quantize_dynamic(fp32_file, int8_file, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
