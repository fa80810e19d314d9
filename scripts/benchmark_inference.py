"""Inference speed of each backend on the same texts, in process and over HTTP, side by side.

In process: throughput (texts/s) one text a call and 32 a batch, and the latency of single-text calls.
Over HTTP: the real `finsent-serve` on a loopback port (alone, or `--front nginx` as the serve image
runs it; tests/support/server.py starts it), single-text requests from each number of
concurrent clients in turn (asyncio + aiohttp in this process, on the same CPU as the server): latency
p50/p99, throughput, errors (any answer but 200, or no answer). A column compares each
throughput with the in-process batch 32 one. Prints a Markdown table.

The clients use aiohttp rather than httpx: on the 2-core dev machine httpx's client spent more CPU a
request than the server itself, about seven times aiohttp's, and a load generator that costly on the
server's CPU measures itself. The client's CPU a request is reported too. aiohttp comes with DVC
(through dvc-http), so the environment `make install` makes runs this script as it is.

From the project root, after `dvc repro export` (the project root on PYTHONPATH for tests/support):

    PYTHONPATH=src:. python scripts/benchmark_inference.py
    PYTHONPATH=src:. python scripts/benchmark_inference.py --front nginx --backends onnx_int8
    PYTHONPATH=src:. python scripts/benchmark_inference.py --pretrained PATH_OR_NAME --layers 6

--pretrained times another model without training it: the classifier the train stage would build from
that checkpoint (a new head, LoRA as params.yaml's `lora` section says), saved as the train stage saves
it and exported as the export stage exports it (LoRA merged, smoothed, static int8, calibrated on the
training texts), in a temporary folder. Speed does not depend on the weights' values, so it times what
a trained model of that architecture would; its answers mean nothing. --layers N keeps N of its
layers, as `model.layers` does.
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

from finsent.config import BACKENDS, load_params
from finsent.data import read_jsonl
from finsent.experiments.benchmark_record import write_record
from finsent.inference.predictors import load_predictor
from tests.support.server import running_server


def in_process(
    backend: str, model_dir: Path, exported_dir: Path, texts: list[str], single: int, device: str
) -> list[dict]:
    """Batch 1 (the first `single` texts, timed one by one) and batch 32 (all texts)."""
    one = load_predictor(backend, model_dir, exported_dir, batch_size=1, device=device)
    one.predict_proba(texts[:8])  # warm-up
    latencies = []
    for text in texts[:single]:
        start = time.perf_counter()
        one.predict_proba([text])
        latencies.append(time.perf_counter() - start)
    batched = load_predictor(backend, model_dir, exported_dir, batch_size=32, device=device)
    batched.predict_proba(texts[:64])
    start = time.perf_counter()
    batched.predict_proba(texts)
    batch_seconds = time.perf_counter() - start
    return [
        {"run": "in process, batch 1", "texts_per_s": single / sum(latencies), **percentiles(latencies)},
        {"run": "in process, batch 32", "texts_per_s": len(texts) / batch_seconds},
    ]


def untrained_export(
    checkpoint: str, layers: int | None, calibration_file: Path, folder: Path
) -> tuple[Path, Path]:
    """`checkpoint` (`layers` of its layers, as model.layers keeps them) as the train and export stages
    would write it, untrained: (model_dir, exported_dir)."""
    # The training stack, imported only here: it takes seconds, and a bad argument is refused before.
    from finsent.export import write_onnx_models
    from finsent.inference.predictors import TorchPredictor
    from finsent.modeling import checkpoint_with_layers, load_base_model, save_classifier, with_lora
    from finsent.pretrained import resolve_pretrained
    from finsent.tokenization import load_fast_tokenizer, text_normalization

    params = load_params()
    checkpoint_dir = resolve_pretrained(checkpoint, params.model.revision)
    tokenizer = load_fast_tokenizer(checkpoint_dir, params.tokenize.max_length)
    if layers is not None:  # weights and config alone: the tokenizer is the checkpoint's
        checkpoint_dir = checkpoint_with_layers(checkpoint_dir, layers, folder / "checkpoint")
    model = with_lora(load_base_model(checkpoint_dir), params.lora)
    model_dir, exported_dir = folder / "models", folder / "exported"
    # Untrained: no temperature fitted on dev, the logits as they are (T = 1).
    normalize = text_normalization(params.tokenize)
    save_classifier(model, tokenizer, normalize, 1.0, checkpoint, checkpoint_dir, model_dir)
    reference = TorchPredictor.from_dir(model_dir, params.export.batch_size)
    exported_dir.mkdir()
    write_onnx_models(reference, exported_dir, read_jsonl(calibration_file)["text"].tolist(), params.export)
    return model_dir, exported_dir


def percentiles(latencies: list[float]) -> dict:
    return {f"p{q}_ms": 1000 * float(np.percentile(latencies, q)) for q in (50, 99)}


async def _clients(base_url: str, texts: list[str], clients: int) -> tuple[list[float], int, float, float]:
    """Latencies, errors, seconds, and the CPU seconds the clients used, for `texts` one a request."""
    queue = list(reversed(texts))
    latencies: list[float] = []
    errors = 0

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal errors
        while queue:
            text = queue.pop()
            start = time.perf_counter()
            try:
                async with http.post("/v1/predict", json={"texts": [text]}) as response:
                    await response.read()
                    errors += response.status != 200
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
            latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as http:
        start, start_cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return latencies, errors, time.perf_counter() - start, time.process_time() - start_cpu


def over_http(
    backend: str,
    model_dir: Path,
    exported_dir: Path,
    texts: list[str],
    client_counts: list[int],
    model_threads: int | None,
    front: str,
) -> list[dict]:
    """Single-text requests to one fresh `finsent-serve --backend <backend>` (with `front`), from each
    number of concurrent clients in turn. `model_threads` None leaves the server its own setting."""
    args = ["--backend", backend, "--model-dir", str(model_dir), "--exported-dir", str(exported_dir)]
    if model_threads is not None:
        args += ["--model-threads", str(model_threads)]
    results = []
    with running_server(front, args=args) as server:
        for clients in client_counts:
            asyncio.run(_clients(server.url, texts[:64], clients))  # warm-up
            latencies, errors, seconds, client_cpu = asyncio.run(_clients(server.url, texts, clients))
            results.append(
                {
                    "run": f"HTTP, {clients} clients",
                    "texts_per_s": len(texts) / seconds,
                    **percentiles(latencies),
                    "errors": errors,
                    "client_cpu_ms": 1000 * client_cpu / len(texts),
                }
            )
    return results


def print_table(results: dict) -> None:
    """The runs as a Markdown table, each against its backend's in-process batch-32 throughput."""
    print(
        "| backend | run | texts/s | p50 / p99 (ms) | errors | vs batch 32 | client CPU (ms a request) |\n"
        + "|---" * 7
        + "|"
    )
    for backend, runs in results.items():
        batch32 = next(run["texts_per_s"] for run in runs if run["run"] == "in process, batch 32")
        for run in runs:
            latency = f"{run['p50_ms']:.1f} / {run['p99_ms']:.1f}" if "p50_ms" in run else ""
            errors = run.get("errors", "")
            client_cpu = f"{run['client_cpu_ms']:.2f}" if "client_cpu_ms" in run else ""
            print(
                f"| {backend} | {run['run']} | {run['texts_per_s']:.0f} | {latency} | {errors} "
                f"| {run['texts_per_s'] / batch32:.0%} | {client_cpu} |"
            )


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=Path, default=Path("data/raw/validation.jsonl"), help="JSONL split")
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--exported-dir", type=Path, default=Path("exported"))
    parser.add_argument("--single", type=int, default=500, help="texts timed one by one in process")
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32], help="concurrent HTTP clients")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument(
        "--server-model-threads",
        type=int,
        help="the server's --model-threads (default: its own setting, serve.model_threads)",
    )
    parser.add_argument(
        "--front",
        choices=("none", "nginx"),
        default="none",
        help="the server's front (default: the API alone)",
    )
    parser.add_argument("--pretrained", metavar="CHECKPOINT", help="time this model, untrained (see above)")
    parser.add_argument("--layers", type=int, help="with --pretrained: N of its layers, as model.layers")
    parser.add_argument(
        "--gpu", action="store_true", help="the pytorch backend in process on the CUDA GPU (the server: CPU)"
    )
    parser.add_argument("--output", type=Path, help="also write the results here, as JSON")
    return parser


def main() -> None:
    parser = argument_parser()
    args = parser.parse_args()
    if args.layers is not None and (args.pretrained is None or args.layers < 1):
        parser.error("--layers: a number of layers above 0, with --pretrained")
    texts = read_jsonl(args.texts)["text"].tolist()
    if args.pretrained:
        scratch = tempfile.TemporaryDirectory(prefix="finsent-benchmark-")
        args.model_dir, args.exported_dir = untrained_export(
            args.pretrained, args.layers, Path("data/raw/train.jsonl"), Path(scratch.name)
        )
        print(f"exported {args.pretrained}, untrained, into {scratch.name}", file=sys.stderr)
    results = {}
    for backend in args.backends:
        device = "cuda" if args.gpu and backend == "pytorch" else "cpu"
        results[backend] = in_process(backend, args.model_dir, args.exported_dir, texts, args.single, device)
        results[backend] += over_http(
            backend,
            args.model_dir,
            args.exported_dir,
            texts,
            args.clients,
            args.server_model_threads,
            args.front,
        )
        print(backend, json.dumps(results[backend]), file=sys.stderr)

    threads = "its setting" if args.server_model_threads is None else args.server_model_threads
    cpus = len(os.sched_getaffinity(0))
    layers = f", {args.layers} layers" if args.layers else ""
    model = f"{args.pretrained}{layers} (untrained)" if args.pretrained else str(args.exported_dir)
    print(
        f"{model}; {len(texts)} texts of {args.texts}; {cpus} CPUs; server model threads: {threads}; "
        f"front: {args.front}\n"
    )
    print_table(results)
    if args.output:
        write_record(args.output, {"model": model, "texts": len(texts), "cpus": cpus, "backends": results})
    if args.pretrained:
        scratch.cleanup()


if __name__ == "__main__":
    main()
