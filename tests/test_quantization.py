import numpy as np
import onnx
import pytest
import torch
from conftest import tiny_checkpoint
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from scipy.special import softmax
from transformers import AutoTokenizer

from finsent.data import SOURCE_FILES, read_source_csv
from finsent.export import export_onnx
from finsent.inference.cpu import Cpu, this_cpu
from finsent.inference.predictors import OnnxPredictor
from finsent.modeling import load_base_model
from finsent.quantization import (
    SmoothedLinear,
    input_channel_maxima,
    quantize_int8,
    smooth_activations,
    unsigned_copy,
    weight_nodes,
)
from finsent.temperature import save_temperature
from finsent.text import TextNormalization, save_text_processing

TEXTS = [
    "$AAPL beats estimates",
    "Fed holds rates steady as inflation cools, markets rally into the close",
    "$TSLA deliveries miss, shares slide after hours",
    "Oil flat ahead of OPEC meeting",
]
ARCHITECTURES = ["bert", "deberta-v2", "mpnet"]


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


@pytest.mark.parametrize("architecture", ARCHITECTURES)
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


def tweets(mirror, split: str) -> list[str]:
    return read_source_csv(mirror / SOURCE_FILES[split])["text"].tolist()


def exported_pair(folder, architecture, calibration_texts):
    """A tiny classifier, smoothed, exported to folder/model.onnx and quantized to folder/model_int8.onnx."""
    model, tokenizer = tiny_classifier(folder / "checkpoint", architecture)
    save_text_processing(folder, tokenizer, TextNormalization())
    save_temperature(folder, 1.0)
    smooth_activations(model, tokenizer, calibration_texts, alpha=0.8)
    export_onnx(model, tokenizer, folder / "model.onnx")
    quantize_int8(folder / "model.onnx", folder / "model_int8.onnx", tokenizer, calibration_texts)
    return folder / "model.onnx", folder / "model_int8.onnx"


def alone_and_in_a_padded_batch(model_file, texts, longer_texts):
    """Each text's probabilities alone, and as the first row of a batch of 32 with 31 `longer_texts`
    (the batch is padded to the longest of them)."""
    predictor = OnnxPredictor(model_file, batch_size=32)
    alone = [softmax(predictor.batch_logits([text]), axis=-1)[0] for text in texts]
    in_batch = [softmax(predictor.batch_logits([text, *longer_texts[:31]]), axis=-1)[0] for text in texts]
    return np.array(alone), np.array(in_batch)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_int8_gives_a_text_the_same_probabilities_alone_and_in_a_padded_batch(
    tmp_path, small_mirror, architecture
):
    _, int8_file = exported_pair(tmp_path, architecture, tweets(small_mirror, "train")[:64])
    by_length = sorted(tweets(small_mirror, "validation"), key=len)
    short, longest = by_length[:16], by_length[::-1][:31]
    encode = OnnxPredictor(int8_file, 1).encode
    assert (
        max(encode([text])["input_ids"].shape[1] for text in short)
        < encode(longest[:1])["input_ids"].shape[1]
    )

    alone, in_batch = alone_and_in_a_padded_batch(int8_file, short, longest)
    np.testing.assert_array_equal(alone.argmax(axis=1), in_batch.argmax(axis=1))
    assert np.abs(alone - in_batch).max() < 1e-6

    # What this check catches: the same fp32 model quantized dynamically (ranges per batch) differs by
    # more than ten times the tolerance (1e-4 to 2e-4 measured; the random head's probabilities are all
    # near 1/3).
    dynamic_file = tmp_path / "model_dynamic.onnx"
    quantize_dynamic(tmp_path / "model.onnx", dynamic_file, weight_type=QuantType.QInt8, per_channel=True)
    alone, in_batch = alone_and_in_a_padded_batch(dynamic_file, short, longest)
    assert np.abs(alone - in_batch).max() > 1e-5


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_int8_has_fixed_activation_ranges_and_int8_weights_only(tmp_path, small_mirror, architecture):
    fp32_file, int8_file = exported_pair(tmp_path, architecture, tweets(small_mirror, "train")[:64])
    fp32_nodes = {node.name: node for node in onnx.load(fp32_file).graph.node}
    quantized = set(weight_nodes(onnx.load(fp32_file)))
    # The linear layers of the 2 blocks (query, key, value, attention output, the two feed-forward
    # layers); not the products of two activations (attention scores, and their weighted sum of
    # values), nor the pooler and classifier (Gemm), nor the embedding tables (Gather).
    assert len(quantized) == 12
    assert {fp32_nodes[name].op_type for name in quantized} == {"MatMul"}

    graph = onnx.load(int8_file).graph
    stored = {initializer.name: initializer for initializer in graph.initializer}
    made_by = {output: node for node in graph.node for output in node.output}

    def stored_8_bit_input(node) -> int | None:
        """The type of the stored 8-bit tensor that `node` reads through a DequantizeLinear, if any."""
        for name in node.input:
            if name in made_by and made_by[name].op_type == "DequantizeLinear":
                data_type = stored.get(made_by[name].input[0], onnx.TensorProto()).data_type
                if data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
                    return data_type
        return None

    products = {node.name: stored_8_bit_input(node) for node in graph.node if node.name in fp32_nodes}
    assert {name for name, data_type in products.items() if data_type is not None} == quantized
    # Linear weights signed (u8 x s8: the VNNI and AMX instruction), per output channel; the embedding
    # tables stored as they were.
    assert {products[name] for name in quantized} == {onnx.TensorProto.INT8}
    lookups = [node for node in graph.node if node.op_type == "Gather" and node.input[0] in stored]
    assert lookups
    assert {stored[node.input[0]].data_type for node in lookups} <= {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.INT64,
    }
    assert any(stored[node.input[0]].data_type == onnx.TensorProto.FLOAT for node in lookups)
    # Static ranges: each activation's scale and zero point are stored in the model; none is computed
    # per batch (DynamicQuantizeLinear, as quantize_dynamic makes).
    assert "DynamicQuantizeLinear" not in {node.op_type for node in graph.node}
    activations = [node for node in graph.node if node.op_type == "QuantizeLinear"]
    assert len(activations) >= 12
    assert all(node.input[1] in stored and node.input[2] in stored for node in activations)


def dequantized_weights(model_file) -> dict[str, np.ndarray]:
    """Each stored 8-bit weight as its DequantizeLinear gives it: (w - zero point) * scale, per channel."""
    graph = onnx.load(model_file).graph
    stored = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    weights = {}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and stored.get(node.input[0]) is not None:
            values, scale, zero_point = (stored[name] for name in node.input)
            if values.dtype in (np.int8, np.uint8):
                axis = next((attribute.i for attribute in node.attribute if attribute.name == "axis"), 1)
                shape = [-1 if dimension == axis else 1 for dimension in range(values.ndim)]
                offsets = values.astype(np.int32) - zero_point.astype(np.int32).reshape(shape)
                weights[node.output[0]] = offsets * scale.reshape(shape)
    return weights


def test_the_unsigned_copy_dequantizes_to_the_same_weights_and_changes_nothing_else(tmp_path, small_mirror):
    _, int8_file = exported_pair(tmp_path, "bert", tweets(small_mirror, "train")[:64])
    unsigned_file = tmp_path / "model_int8_u8.onnx"
    unsigned_copy(int8_file, unsigned_file)
    signed, unsigned = dequantized_weights(int8_file), dequantized_weights(unsigned_file)
    assert len(signed) == 12 and signed.keys() == unsigned.keys()
    for name, values in signed.items():
        np.testing.assert_array_equal(unsigned[name], values)
    stored = {tensor.name: tensor for tensor in onnx.load(unsigned_file).graph.initializer}
    assert onnx.TensorProto.INT8 not in {tensor.data_type for tensor in stored.values()}
    unchanged = [t for t in onnx.load(int8_file).graph.initializer if t.data_type != onnx.TensorProto.INT8]
    assert unchanged and all(stored[tensor.name] == tensor for tensor in unchanged)
    assert [n.op_type for n in onnx.load(unsigned_file).graph.node] == [
        n.op_type for n in onnx.load(int8_file).graph.node
    ]


@pytest.mark.skipif(
    not this_cpu().signed_int8_weights, reason="this CPU has no exact u8 x s8 product (VNNI or AMX)"
)
def test_where_both_are_exact_the_two_int8_files_give_the_same_probabilities(tmp_path, small_mirror):
    _, int8_file = exported_pair(tmp_path, "bert", tweets(small_mirror, "train")[:64])
    unsigned_copy(int8_file, tmp_path / "model_int8_u8.onnx")
    texts = tweets(small_mirror, "validation")
    signed = OnnxPredictor(int8_file, 32).predict_proba(texts)
    unsigned = OnnxPredictor(tmp_path / "model_int8_u8.onnx", 32).predict_proba(texts)
    assert np.abs(signed - unsigned).max() < 1e-6


def test_a_cpu_gets_signed_int8_weights_only_with_vnni_or_amx():
    def cpu(*flags):
        return Cpu("test", "x86_64", frozenset(flags), 2)

    assert not cpu("avx2", "fma").signed_int8_weights
    assert not cpu("avx2", "avx512f", "avx512bw").signed_int8_weights  # AVX-512 without VNNI
    assert not cpu().signed_int8_weights  # flags unknown: the format that is exact everywhere
    for flag in ("avx512_vnni", "avx_vnni", "amx_int8"):
        assert cpu("avx2", flag).signed_int8_weights
