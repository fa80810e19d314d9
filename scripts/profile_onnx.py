"""Where an exported model's time goes on ONNX Runtime: its profiler's trace of batches of texts (as the
predictors batch them), summed by operator type, largest first.

    PYTHONPATH=src:. python scripts/profile_onnx.py exported/model_int8.onnx
    PYTHONPATH=src:. python scripts/profile_onnx.py exported/model_int8.onnx --output benchmarks/profile.json
"""

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import onnxruntime

from finsent.data import read_jsonl
from finsent.experiments.benchmark_record import write_record
from finsent.inference.predictors import OnnxPredictor


def operator_times(model_file: Path, texts: list[str], batch_size: int) -> Counter:
    """Microseconds spent in each operator type over `texts`, from ONNX Runtime's profiler."""
    predictor = OnnxPredictor(model_file, batch_size)
    predictor.predict_proba(texts[:64])  # warm-up, not profiled
    options = onnxruntime.SessionOptions()
    with tempfile.TemporaryDirectory(prefix="finsent-profile-") as scratch:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "trace")
        predictor.session = onnxruntime.InferenceSession(
            model_file, options, providers=["CPUExecutionProvider"]
        )
        predictor.predict_proba(texts)
        trace = json.loads(Path(predictor.session.end_profiling()).read_text())
    times = Counter()
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times[event["args"]["op_name"]] += event["dur"]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_file", type=Path)
    parser.add_argument("--texts", type=Path, default=Path("data/raw/validation.jsonl"), help="JSONL split")
    parser.add_argument("--count", type=int, default=640, help="texts profiled")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", type=Path, help="also write the results here, as JSON")
    args = parser.parse_args()
    texts = read_jsonl(args.texts)["text"].tolist()[: args.count]
    times = operator_times(args.model_file, texts, args.batch_size)
    total = sum(times.values())
    print(
        f"{args.model_file}: {len(texts)} texts in batches of {args.batch_size}, "
        f"{total / 1e6:.2f} s in kernels\n"
    )
    print("| operator | share | ms a text |\n|---|---|---|")
    for name, microseconds in times.most_common():
        print(f"| {name} | {microseconds / total:.1%} | {microseconds / 1000 / len(texts):.3f} |")
    if args.output:
        write_record(
            args.output,
            {
                "model_file": str(args.model_file),
                "texts": len(texts),
                "batch_size": args.batch_size,
                "microseconds": dict(times),
            },
        )


if __name__ == "__main__":
    main()
