import pytest
import torch
from conftest import tiny_checkpoint
from transformers import AutoTokenizer

from finsent.modeling import load_base_model
from finsent.quantization import SmoothedLinear, input_channel_maxima, smooth_activations

TEXTS = [
    "$AAPL beats estimates",
    "Fed holds rates steady as inflation cools, markets rally into the close",
    "$TSLA deliveries miss, shares slide after hours",
    "Oil flat ahead of OPEC meeting",
]


def tiny_classifier(folder, architecture):
    torch.manual_seed(0)
    model = load_base_model(tiny_checkpoint(folder, architecture)).eval()
    with torch.no_grad():  # uneven channels, as in a trained encoder: some ten times the others
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(torch.rand_like(module.weight) * 10)
    return model, AutoTokenizer.from_pretrained(folder)


def logits(model, tokenizer, texts):
    with torch.inference_mode():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits


@pytest.mark.parametrize("architecture", ["bert", "deberta-v2"])
def test_smoothing_leaves_the_fp32_model_unchanged(tmp_path, architecture):
    model, tokenizer = tiny_classifier(tmp_path, architecture)
    linear_layers = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    before = logits(model, tokenizer, TEXTS)
    smooth_activations(model, tokenizer, TEXTS[:2], alpha=0.8)
    smoothed = {name for name, module in model.named_modules() if isinstance(module, SmoothedLinear)}
    assert smoothed == linear_layers  # every linear layer, the classification head's too
    torch.testing.assert_close(logits(model, tokenizer, TEXTS), before, rtol=1e-4, atol=1e-5)


def test_alpha_one_brings_every_input_channel_to_the_same_range(tmp_path):
    model, tokenizer = tiny_classifier(tmp_path, "bert")
    spread = {name: m.max() / m.min() for name, m in input_channel_maxima(model, tokenizer, TEXTS).items()}
    assert max(spread.values()) > 10
    smooth_activations(model, tokenizer, TEXTS, alpha=1.0)
    # What the wrapped layers now see: on the calibration texts, each channel's largest value is 1.
    for name, maxima in input_channel_maxima(model, tokenizer, TEXTS).items():
        assert name.endswith(".linear")
        torch.testing.assert_close(maxima, torch.ones_like(maxima), rtol=1e-4, atol=0)
