"""Inference speed of each backend on the same texts: in process at batch 1 and 32, and over HTTP.

In process: throughput (texts/s) one text a call and 32 a batch, and the latency of single-text calls.
Over HTTP: the real `finsent-serve` on a loopback port, single-text requests from concurrent clients
(asyncio + httpx in this process): latency p50/p99, throughput, errors. Prints a Markdown table.

    PYTHONPATH=src python scripts/benchmark_inference.py    # from the project root, after `dvc repro export`
"""

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from finsent.data import read_jsonl
from finsent.predictors import load_predictor

BACKENDS = ("pytorch", "onnx_fp32", "onnx_int8")


def in_process(backend: str, model_dir: Path, exported_dir: Path, texts: list[str], single: int) -> dict:
    """Throughput at batch 1 (the first `single` texts) and batch 32 (all texts); single-text latency."""
    one = load_predictor(backend, model_dir, exported_dir, batch_size=1)
    one.predict_proba(texts[:8])  # warm-up
    latencies = []
    for text in texts[:single]:
        start = time.perf_counter()
        one.predict_proba([text])
        latencies.append(time.perf_counter() - start)
    batched = load_predictor(backend, model_dir, exported_dir, batch_size=32)
    batched.predict_proba(texts[:64])
    start = time.perf_counter()
    batched.predict_proba(texts)
    batch_seconds = time.perf_counter() - start
    return {
        "batch1_texts_per_s": single / sum(latencies),
        "batch32_texts_per_s": len(texts) / batch_seconds,
        "single_p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "single_p99_ms": 1000 * float(np.percentile(latencies, 99)),
    }


async def _clients(base_url: str, texts: list[str], clients: int) -> tuple[list[float], int, float]:
    queue = list(reversed(texts))
    latencies: list[float] = []
    errors = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while queue:
            text = queue.pop()
            start = time.perf_counter()
            response = await http.post("/v1/predict", json={"texts": [text]})
            latencies.append(time.perf_counter() - start)
            errors += response.status_code != 200

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return latencies, errors, time.perf_counter() - start


def over_http(
    backend: str,
    model_dir: Path,
    exported_dir: Path,
    texts: list[str],
    clients: int,
    model_threads: int | None,
) -> dict:
    """Single-text requests to a fresh `finsent-serve --backend <backend>` from `clients` clients at once.

    `model_threads` None leaves the server its params.yaml setting.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "finsent.serving.server", "--backend", backend, "--port", str(port)]
    command += ["--model-dir", str(model_dir), "--exported-dir", str(exported_dir)]
    if model_threads is not None:
        command += ["--model-threads", str(model_threads)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"finsent-serve --backend {backend} exited with status {server.returncode}")
            try:
                if httpx.get(f"{base_url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        asyncio.run(_clients(base_url, texts[:64], clients))  # warm-up
        latencies, errors, seconds = asyncio.run(_clients(base_url, texts, clients))
    finally:
        server.terminate()
        server.wait()
    return {
        "http_p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "http_p99_ms": 1000 * float(np.percentile(latencies, 99)),
        "http_texts_per_s": len(texts) / seconds,
        "http_errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=Path, default=Path("data/raw/validation.jsonl"), help="JSONL split")
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--exported-dir", type=Path, default=Path("exported"))
    parser.add_argument("--single", type=int, default=500, help="texts timed one by one in process")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument(
        "--server-model-threads",
        type=int,
        help="the server's --model-threads (default: its params.yaml setting, serve.model_threads)",
    )
    parser.add_argument("--output", type=Path, help="also write the results here, as JSON")
    args = parser.parse_args()
    texts = read_jsonl(args.texts)["text"].tolist()
    results = {}
    for backend in args.backends:
        results[backend] = in_process(backend, args.model_dir, args.exported_dir, texts, args.single)
        results[backend] |= over_http(
            backend, args.model_dir, args.exported_dir, texts, args.clients, args.server_model_threads
        )
        print(backend, json.dumps(results[backend]), file=sys.stderr)

    threads = "params.yaml's" if args.server_model_threads is None else args.server_model_threads
    print(
        f"{len(texts)} texts of {args.texts}; {os.cpu_count()} CPUs; "
        f"HTTP: {args.clients} clients, server model threads: {threads}\n"
    )
    print(
        "| backend | batch 1 (texts/s) | batch 32 (texts/s) | single text p50 / p99 (ms) "
        f"| HTTP p50 / p99 (ms) | HTTP texts/s | HTTP errors |\n|{'---|' * 7}"
    )
    for backend, r in results.items():
        print(
            f"| {backend} | {r['batch1_texts_per_s']:.0f} | {r['batch32_texts_per_s']:.0f} "
            f"| {r['single_p50_ms']:.1f} / {r['single_p99_ms']:.1f} "
            f"| {r['http_p50_ms']:.1f} / {r['http_p99_ms']:.1f} "
            f"| {r['http_texts_per_s']:.0f} | {r['http_errors']} |"
        )
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
