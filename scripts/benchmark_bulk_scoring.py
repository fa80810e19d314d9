"""Bulk scoring speed: the same texts scored by `finsent-predict` in one process and by `finsent-score` on
a local Ray over this machine's cores; with --address, also on that Ray cluster; with a CUDA GPU, also by
finsent-score's PyTorch backend on it (and its ONNX fp32 one where onnxruntime-gpu is installed). Each
command is timed end to end as a user runs it (start-up, model loading, reading and writing included) on
one CSV file of the split's texts repeated to --texts.
Prints a Markdown table: texts/s of each run, and its ratio to finsent-predict's.

    PYTHONPATH=src:. python scripts/benchmark_bulk_scoring.py    # after `dvc repro export`
    PYTHONPATH=src:. python scripts/benchmark_bulk_scoring.py --texts 6000 \\
        --pretrained sentence-transformers/all-MiniLM-L6-v2

--pretrained times another model, untrained, as scripts/benchmark_inference.py does (speed does not
depend on the weights' values). finsent-score gets --unit-rows small enough that each of its workers
has several units. With --address, the scratch folder (--scratch) must be one that every node of the
cluster reads and writes at the same path.
"""

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from benchmark_inference import untrained_export

from finsent.data import read_jsonl
from finsent.experiments.benchmark_record import write_record


def timed(command: list[str]) -> tuple[float, str]:
    """Wall-clock seconds of a command that must succeed, and its standard output."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    return seconds, result.stdout


def gpu_backends() -> list[str]:
    """The backends that finsent-score can run on this machine's GPU: none without one; PyTorch, and
    ONNX fp32 where the onnxruntime installed is its CUDA build (onnxruntime-gpu)."""
    import onnxruntime
    import torch

    if not torch.cuda.is_available():
        return []
    return ["pytorch"] + ["onnx_fp32"] * ("CUDAExecutionProvider" in onnxruntime.get_available_providers())


def commands_to_time(args: argparse.Namespace, input_file: Path, scratch: Path, cpus: int) -> dict[str, list]:
    """Each command to time by its name: finsent-predict first (the baseline), then finsent-score on a
    local Ray (units of a quarter of a core's share), on --address's cluster and on each GPU backend."""
    model = ["--model-dir", str(args.model_dir), "--exported-dir", str(args.exported_dir)]
    score = [sys.executable, "-m", "finsent.inference.batch", str(input_file), "--id-column", "id"]
    score += ["--unit-rows", str(math.ceil(args.texts / (4 * cpus))), *model]
    predict = [sys.executable, "-m", "finsent.inference.predict", "-i", str(input_file), *model]
    commands = {
        "finsent-predict, one process": [*predict, "-o", str(scratch / "predict.csv")],
        f"finsent-score, local Ray ({cpus} CPUs)": [*score, "-o", str(scratch / "local")],
    }
    if args.address:
        cluster = [*score, "-o", str(scratch / "cluster"), "--address", args.address]
        commands[f"finsent-score, cluster {args.address}"] = cluster
    for backend in gpu_backends():
        gpu_run = [*score, "-o", str(scratch / f"gpu-{backend}"), "--gpus-per-worker", "1", "-b", backend]
        commands[f"finsent-score, 1 GPU ({backend})"] = gpu_run
    return commands


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=20_000, help="texts scored by each command")
    parser.add_argument("--split", type=Path, default=Path("data/raw/validation.jsonl"), help="JSONL split")
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--exported-dir", type=Path, default=Path("exported"))
    parser.add_argument("--pretrained", metavar="CHECKPOINT", help="time this model, untrained (see above)")
    parser.add_argument("--address", help="also run finsent-score on this Ray cluster")
    parser.add_argument(
        "--scratch", type=Path, help="folder for the input and outputs (default: a temporary one)"
    )
    parser.add_argument("--output", type=Path, help="also write the results here, as JSON")
    args = parser.parse_args()
    texts = read_jsonl(args.split)["text"].tolist()
    texts = (texts * math.ceil(args.texts / len(texts)))[: args.texts]

    with tempfile.TemporaryDirectory(prefix="finsent-bulk-benchmark-", dir=args.scratch) as scratch:
        scratch = Path(scratch)
        if args.pretrained:
            args.model_dir, args.exported_dir = untrained_export(
                args.pretrained, Path("data/raw/train.jsonl"), scratch
            )
        input_file = scratch / "texts.csv"
        pd.DataFrame({"id": range(len(texts)), "text": texts}).to_csv(input_file, index=False)

        cpus = len(os.sched_getaffinity(0))
        commands = commands_to_time(args, input_file, scratch, cpus)
        results = {}
        for name, command in commands.items():
            seconds, stdout = timed(command)
            own = re.search(r"([\d.]+) texts/s", stdout.splitlines()[-1]) if stdout else None
            results[name] = (len(texts) / seconds, own.group(1) if own else "")
            print(f"{name}: {seconds:.1f} s", file=sys.stderr)

    model_name = f"{args.pretrained} (untrained)" if args.pretrained else str(args.exported_dir)
    print(f"{model_name}; {len(texts):,} texts of {args.split}; {cpus} CPUs\n")
    print(
        "| run | texts/s, end to end | texts/s from Ray's start (finsent-score's line) | vs finsent-predict |"
    )
    print("|---|---|---|---|")
    baseline = results["finsent-predict, one process"][0]
    for name, (rate, own) in results.items():
        print(f"| {name} | {rate:.1f} | {own} | {rate / baseline:.0%} |")
    if args.output:
        runs = {
            name: {"texts_per_s": rate, "texts_per_s_from_ray_start": own}
            for name, (rate, own) in results.items()
        }
        write_record(args.output, {"model": model_name, "texts": len(texts), "cpus": cpus, "runs": runs})


if __name__ == "__main__":
    main()
