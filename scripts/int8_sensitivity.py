"""Which linear layers to keep in fp32 in the int8 model: PyTorch's label kept on dev, and the speed,
for each choice of layers left out of quantization (`export.keep_fp32`, regular expressions over the
ONNX node names), all from one smoothed export of the trained model, calibrated as the export stage does.

    PYTHONPATH=src:. python scripts/int8_sensitivity.py                           # after `dvc repro train`
    PYTHONPATH=src:. python scripts/int8_sensitivity.py --choice ffn_out='/output/dense/' --output FILE

Dev only: the export params are tuned on dev, and validation is what the export stage reports.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from finsent.config import load_params
from finsent.data import read_jsonl
from finsent.experiments.benchmark_record import write_record
from finsent.export import export_onnx
from finsent.inference.predictors import OnnxPredictor, TorchPredictor
from finsent.quantization import quantize_int8, smooth_activations, weight_nodes
from finsent.temperature import save_temperature
from finsent.text import save_text_processing


def default_choices(layers: int) -> dict[str, list[str]]:
    """Whole layers from the top, and each kind of linear layer everywhere (MPNet and BERT names)."""
    return {
        "none (all int8)": [],
        "last layer": [rf"layer\.{layers - 1}/"],
        "last 2 layers": [rf"layer\.({layers - 2}|{layers - 1})/"],
        "first layer": [r"layer\.0/"],
        "feed-forward outputs": [r"/output/dense/"],
        "feed-forward inputs": [r"/intermediate/dense/"],
        "attention outputs": [r"attention/(attn/o|output/dense)/"],
        "classification head": [r"classifier/"],
    }


def measure(args, params, alpha: float, dev: list[str], texts: list[str]) -> dict[str, dict]:
    """Each choice of layers kept fp32, on a model smoothed with `alpha`, against PyTorch on `dev`."""
    reference = TorchPredictor.from_dir(args.model_dir, params.batch_size)
    expected = reference.predict_proba(dev)
    step = max(1, len(texts) // params.calibration_texts)
    calibration = reference.normalize(texts[::step][: params.calibration_texts])
    layers = reference.model.config.num_hidden_layers
    choices = dict(choice.split("=", 1) for choice in args.choice) or None
    choices = (
        {name: [part for part in value.split(",") if part] for name, value in choices.items()}
        if choices
        else default_choices(layers)
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="finsent-sensitivity-") as scratch:
        folder = Path(scratch)
        save_text_processing(folder, reference.tokenizer, reference.normalize)
        save_temperature(folder, reference.temperature)
        smooth_activations(reference.model, reference.tokenizer, calibration, alpha)
        export_onnx(reference.model, reference.tokenizer, folder / "smoothed.onnx")
        all_nodes = weight_nodes(onnx.load(folder / "smoothed.onnx"))
        for name, patterns in choices.items():
            kept = len(all_nodes) - len(weight_nodes(onnx.load(folder / "smoothed.onnx"), patterns))
            print(f"alpha {alpha}, {name}: {kept} of {len(all_nodes)} linear layers in fp32", file=sys.stderr)
            int8_file = folder / "model_int8.onnx"
            quantize_int8(folder / "smoothed.onnx", int8_file, reference.tokenizer, calibration, patterns)
            predictor = OnnxPredictor(int8_file, params.batch_size)
            predictor.predict_proba(dev[:64])
            start = time.perf_counter()
            probabilities = predictor.predict_proba(dev)
            seconds = time.perf_counter() - start
            results[name] = {
                "keep_fp32": patterns,
                "fp32_layers": kept,
                "dev_agreement_with_pytorch": float((probabilities.argmax(1) == expected.argmax(1)).mean()),
                "dev_mean_abs_probability_difference": float(np.abs(probabilities - expected).mean()),
                "batch_32_texts_per_s": len(dev) / seconds,
            }
            print(json.dumps(results[name]), file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--dev", type=Path, default=Path("data/raw/dev.jsonl"))
    parser.add_argument("--calibration", type=Path, default=Path("data/raw/train.jsonl"))
    parser.add_argument("--choice", action="append", default=[], metavar="NAME=REGEX[,REGEX...]")
    parser.add_argument(
        "--alpha", type=float, nargs="+", help="SmoothQuant alphas to try (default: export.smoothing_alpha)"
    )
    parser.add_argument("--output", type=Path, help="also write the results here, as JSON")
    args = parser.parse_args()
    params = load_params().export
    dev = read_jsonl(args.dev)["text"].tolist()
    texts = read_jsonl(args.calibration)["text"].tolist()
    results = {}
    for alpha in args.alpha or [params.smoothing_alpha]:
        for name, run in measure(args, params, alpha, dev, texts).items():
            results[f"alpha {alpha}, {name}"] = run
    print("| alpha, layers in fp32 | count | dev: PyTorch's label | mean probability error | texts/s |")
    print("|---|---|---|---|---|")
    for name, run in results.items():
        print(
            f"| {name} | {run['fp32_layers']} | {run['dev_agreement_with_pytorch']:.2%} | "
            f"{run['dev_mean_abs_probability_difference']:.4f} | {run['batch_32_texts_per_s']:.1f} |"
        )
    if args.output:
        write_record(args.output, {"dev_texts": len(dev), "choices": results})


if __name__ == "__main__":
    main()
