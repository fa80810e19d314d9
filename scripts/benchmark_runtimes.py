"""The exported models on each CPU runtime, against this CPU's own limit, in one run.

1. The CPU's peaks: one matrix product of the served model's largest shape (600 x 768 by 768 x 3072, a
   batch of about 32 tweets through a feed-forward layer), timed on ONNX Runtime with every core: int8
   with signed weights (MatMulInteger u8 x s8), int8 with unsigned weights (u8 x u8), and fp32 (MatMul).
2. Each runtime and file on the same texts, tokenized, normalised and batched as the predictors do:
   texts/s at batch 32 and at batch 1 (p50 latency), PyTorch's label kept (the evaluate stage's
   predictions are the reference), macro-F1; and texts/s as a share of the matching peak, with the
   operations a text (2 x the linear layers' weights x the mean tokens a text) the share assumes.

    PYTHONPATH=src:. python scripts/benchmark_runtimes.py                      # after `dvc repro export`
    PYTHONPATH=src:. python scripts/benchmark_runtimes.py --output benchmarks/runtimes.json

Runtimes: ONNX Runtime's CPU provider, and OpenVINO where it is installed (`pip install openvino`), which
reads the same ONNX files; on CPUs with AMX or AVX512-BF16 OpenVINO runs fp32 models in bf16 by
default (for an int8 model, in the layers left in floating point): the int8 files are timed as served, the
fp32 file in both precisions there.
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from benchmark_inference import untrained_export
from onnx import TensorProto, helper, numpy_helper

from finsent.config import LABELS, PROBABILITY_COLUMNS
from finsent.data import read_jsonl
from finsent.experiments.benchmark_record import write_record
from finsent.inference.cpu import this_cpu
from finsent.inference.predictors import FP32_FILE, INT8_FILES, OnnxPredictor, Predictor
from finsent.inference.tokenizer import TextEncoder
from finsent.metrics import headline_metrics
from finsent.temperature import load_temperature
from finsent.text import TextNormalization

PEAK_SHAPE = (600, 768, 3072)
"""M, K, N of the timed product: 32 texts of about 19 tokens, by a 768 x 3072 weight."""


def product_graph(kind: str) -> onnx.ModelProto:
    """One matrix product of PEAK_SHAPE with a stored weight: "u8s8", "u8u8" (MatMulInteger) or "fp32"."""
    m, k, n = PEAK_SHAPE
    rng = np.random.default_rng(0)
    if kind == "fp32":
        weight = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        inputs, output = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])], TensorProto.FLOAT
    else:
        dtype = np.int8 if kind == "u8s8" else np.uint8
        weight = numpy_helper.from_array(rng.integers(0, 127, (k, n)).astype(dtype), "w")
        node = helper.make_node("MatMulInteger", ["x", "w"], ["y"])
        inputs, output = [helper.make_tensor_value_info("x", TensorProto.UINT8, [m, k])], TensorProto.INT32
    graph = helper.make_graph(
        [node], kind, inputs, [helper.make_tensor_value_info("y", output, [m, n])], [weight]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def peak_gops(kind: str, seconds: float = 3.0) -> float:
    """Operations a second (a multiply and an add each count one) of one product of PEAK_SHAPE."""
    session = onnxruntime.InferenceSession(
        product_graph(kind).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    m, k, _ = PEAK_SHAPE
    x = np.random.default_rng(1).integers(0, 255, (m, k)).astype(np.float32 if kind == "fp32" else np.uint8)
    for _ in range(3):
        session.run(None, {"x": x})
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {"x": x})
        runs += 1
    return 2 * np.prod(PEAK_SHAPE) * runs / (time.perf_counter() - start) / 1e9


def linear_weights(fp32_file: Path) -> int:
    """Weights of the linear layers (MatMuls by a stored matrix): what each token is multiplied by."""
    model = onnx.load(fp32_file)
    stored = {tensor.name: np.prod(tensor.dims) for tensor in model.graph.initializer}
    return int(
        sum(
            stored[node.input[1]]
            for node in model.graph.node
            if node.op_type == "MatMul" and node.input[1] in stored
        )
    )


class OpenVinoPredictor(Predictor):
    """An exported ONNX file compiled by OpenVINO for the CPU, fed as OnnxPredictor feeds ONNX Runtime."""

    def __init__(self, model_file: Path, batch_size: int, config: dict):
        import openvino

        folder = model_file.parent
        super().__init__(batch_size, TextNormalization.load(folder), load_temperature(folder))
        self.encode = TextEncoder(folder)
        model = openvino.Core().read_model(model_file)
        self.input_names = [port.get_any_name() for port in model.inputs]
        self.compiled = openvino.Core().compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", **config})

    def batch_logits(self, texts: list[str]) -> np.ndarray:
        batch = self.encode(texts)
        return self.compiled({name: batch[name] for name in self.input_names})[0]


def candidates(exported_dir: Path) -> dict[str, callable]:
    """Each (runtime, file, precision) to time, as a function of the batch size giving a predictor."""
    files = {"fp32": FP32_FILE, "int8 signed": INT8_FILES["signed"], "int8 unsigned": INT8_FILES["unsigned"]}
    made = {}
    for precision, name in files.items():
        made[f"onnxruntime, {precision}"] = lambda size, name=name: OnnxPredictor(exported_dir / name, size)
    if importlib.util.find_spec("openvino"):
        for precision, name in files.items():
            # The int8 files as served: the layers left in floating point in OpenVINO's default precision
            # (bf16 where the CPU computes it natively); the fp32 file in fp32, bf16 below.
            hint = {"INFERENCE_PRECISION_HINT": "f32"} if precision == "fp32" else {}
            made[f"openvino, {precision}"] = lambda size, name=name, hint=hint: OpenVinoPredictor(
                exported_dir / name, size, hint
            )
        if this_cpu().flags & {"amx_bf16", "avx512_bf16"}:
            made["openvino, fp32 file in bf16"] = lambda size: OpenVinoPredictor(
                exported_dir / FP32_FILE, size, {"INFERENCE_PRECISION_HINT": "bf16"}
            )
    return made


def time_candidate(make, texts: list[str], single: int) -> tuple[dict, np.ndarray]:
    batched = make(32)
    batched.predict_proba(texts[:64])  # warm-up
    start = time.perf_counter()
    probabilities = batched.predict_proba(texts)
    batch_seconds = time.perf_counter() - start
    one = make(1)
    one.predict_proba(texts[:8])
    latencies = []
    for text in texts[:single]:
        start = time.perf_counter()
        one.predict_proba([text])
        latencies.append(time.perf_counter() - start)
    return {
        "batch_32_texts_per_s": len(texts) / batch_seconds,
        "batch_1_texts_per_s": single / sum(latencies),
        "batch_1_p50_ms": 1000 * float(np.median(latencies)),
    }, probabilities


def time_model(exported_dir: Path, texts: list[str], args, peaks: dict, reference=None, labels=None) -> dict:
    """Every candidate of one exported model: timings, share of peak and, given PyTorch's probabilities
    (`reference`) and `labels`, fidelity and macro-F1."""
    encode = TextEncoder(exported_dir)
    normalize = TextNormalization.load(exported_dir)
    # Tokens a text, padding aside (the encoder pads a batch to its longest).
    tokens = float(
        np.mean([sum(row.attention_mask) for row in encode.tokenizer.encode_batch(normalize(texts))])
    )
    operations = 2 * linear_weights(exported_dir / FP32_FILE) * tokens
    runs = {}
    for name, make in candidates(exported_dir).items():
        if args.only and not any(part in name for part in args.only):
            continue
        print(f"timing {exported_dir}: {name}", file=sys.stderr)
        timing, probabilities = time_candidate(make, texts, args.single)
        peak = peaks["fp32"] if "fp32" in name else peaks["u8s8"]  # the CPU's int8 peak for either format
        share = None if "bf16" in name else timing["batch_32_texts_per_s"] * operations / 1e9 / peak
        runs[name] = {**timing, "share_of_peak": share}  # None: no bf16 peak is measured
        if reference is not None:
            agreement = (probabilities.argmax(axis=1) == reference.argmax(axis=1)).mean()
            runs[name] |= {
                "agreement_with_pytorch": float(agreement),
                "macro_f1": headline_metrics(labels, probabilities)["macro_f1"],
            }
        print(name, json.dumps(runs[name]), file=sys.stderr)
    return {"operations_a_text": operations, "mean_tokens": tokens, "runs": runs}


def print_table(name: str, model: dict) -> None:
    operations, tokens = model["operations_a_text"] / 1e9, model["mean_tokens"]
    print(f"\n{name}: {operations:.2f} G operations a text ({tokens:.1f} tokens)\n")
    columns = ["runtime, model", "batch 32: texts/s", "share of peak", "batch 1: texts/s (p50 ms)"]
    print("| " + " | ".join([*columns, "PyTorch's label", "macro-F1"]) + " |\n" + "|---" * 6 + "|")
    for run_name, run in model["runs"].items():
        batch_1 = f"{run['batch_1_texts_per_s']:.1f} ({run['batch_1_p50_ms']:.1f})"
        fidelity = (
            f"{run['agreement_with_pytorch']:.2%} | {run['macro_f1']:.4f}" if "macro_f1" in run else "| "
        )
        share = "" if run["share_of_peak"] is None else f"{run['share_of_peak']:.0%}"
        batch_32 = f"{run['batch_32_texts_per_s']:.1f} | {share}"
        print(f"| {run_name} | {batch_32} | {batch_1} | {fidelity} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--exported-dir", type=Path, default=Path("exported"))
    parser.add_argument("--texts", type=Path, default=Path("data/raw/validation.jsonl"), help="JSONL split")
    parser.add_argument(
        "--reference",
        type=Path,
        default=Path("plots/predictions.csv"),
        help="PyTorch's probabilities (evaluate)",
    )
    parser.add_argument(
        "--pretrained",
        metavar="CHECKPOINT",
        help="also time this model, untrained, exported as the stages export (the fast preset's: "
        "sentence-transformers/all-MiniLM-L6-v2); speed does not depend on the weights",
    )
    parser.add_argument("--single", type=int, default=300, help="texts timed one by one")
    parser.add_argument("--only", nargs="+", help="time only the candidates whose name contains one of these")
    parser.add_argument("--output", type=Path, help="also write the results here, as JSON")
    args = parser.parse_args()
    split = read_jsonl(args.texts)
    texts, labels = split["text"].tolist(), split["label"].to_numpy()
    reference = np.loadtxt(args.reference, delimiter=",", skiprows=1, usecols=range(-len(LABELS), 0), ndmin=2)
    header = args.reference.read_text(encoding="utf-8").splitlines()[0].split(",")
    if header[-len(LABELS) :] != list(PROBABILITY_COLUMNS) or len(reference) != len(texts):
        raise SystemExit(f"{args.reference}: not the evaluate stage's predictions on {args.texts}")

    print("peaks (every core):", file=sys.stderr)
    peaks = {kind: peak_gops(kind) for kind in ("u8s8", "u8u8", "fp32")}
    print(json.dumps(peaks), file=sys.stderr)
    models = {str(args.exported_dir): time_model(args.exported_dir, texts, args, peaks, reference, labels)}
    if args.pretrained:
        with tempfile.TemporaryDirectory(prefix="finsent-benchmark-") as scratch:
            _, exported = untrained_export(args.pretrained, None, Path("data/raw/train.jsonl"), Path(scratch))
            models[f"{args.pretrained} (untrained)"] = time_model(exported, texts, args, peaks)
    results = {
        "peaks_gops": peaks,
        "peak_shape": PEAK_SHAPE,
        "texts": len(texts),
        "threads": len(os.sched_getaffinity(0)),
        "versions": {"onnxruntime": onnxruntime.__version__, **openvino_version()},
        "models": models,
    }
    machine = this_cpu().describe()
    print(f"{machine['model']} ({', '.join(machine['flags'])}), {results['threads']} cores")
    print(f"peaks: int8 u8 x s8 {peaks['u8s8']:,.0f} GOPS, u8 x u8 {peaks['u8u8']:,.0f}, ", end="")
    print(f"fp32 {peaks['fp32']:,.0f} GFLOPS")
    for name, model in models.items():
        print_table(name, model)
    if args.output:
        write_record(args.output, results)


def openvino_version() -> dict:
    if not importlib.util.find_spec("openvino"):
        return {}
    import openvino

    return {"openvino": openvino.__version__}


if __name__ == "__main__":
    main()
