"""What a serving install costs and gives: a fresh virtual environment with requirements-serve.txt and the
package (`pip install '.[serve]'`, pinned), its size on disk, the start-up of `finsent-serve` to its first
200 on /readyz, `finsent-predict` on one text end to end, and its answers on a file of texts against
this environment's (the full install's) `finsent-predict`, byte for byte.

    PYTHONPATH=src:. python scripts/benchmark_serve_install.py            # after `dvc repro export`
    PYTHONPATH=src:. python scripts/benchmark_serve_install.py --output benchmarks/serve_install.json

Needs pip to reach a package index (or its cache). The venv goes in a temporary folder unless --venv
names one that exists already (then it is reused as it is).
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from finsent.data import read_jsonl
from finsent.experiments.benchmark_record import write_record

PROJECT = Path(__file__).resolve().parents[1]


def make_venv(venv: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(PROJECT / "requirements-serve.txt")], check=True)
    subprocess.run([*pip, "--no-deps", str(PROJECT)], check=True)


def size_mb(folder: Path) -> float:
    return sum(path.lstat().st_size for path in folder.rglob("*") if not path.is_symlink()) / 2**20


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def seconds_to_ready(command: list[str], folder: Path) -> float:
    """From starting the server to its first 200 on /readyz, polled every 5 ms."""
    port = free_port()
    start = time.perf_counter()
    server = subprocess.Popen(
        [*command, "--port", str(port)], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.005)
        raise SystemExit(f"{command[0]} exited with status {server.returncode}")
    finally:
        server.terminate()
        server.wait()


def seconds_to_run(command: list[str], folder: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=folder, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--exported-dir", type=Path, default=Path("exported"))
    parser.add_argument("--texts", type=Path, default=Path("data/raw/validation.jsonl"), help="JSONL split")
    parser.add_argument(
        "--venv", type=Path, help="the serving venv (default: a new one in a temporary folder)"
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output", type=Path, help="also write the results here, as JSON")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="finsent-serve-install-"))
    try:
        venv = args.venv or scratch / "venv"
        if not venv.exists():
            print(f"installing into {venv}", file=sys.stderr)
            make_venv(venv)
        # What an image holds: the export folder alone, no params.yaml.
        folder = scratch / "image"
        shutil.copytree(args.exported_dir, folder / "exported")
        read_jsonl(args.texts)[["text"]].to_csv(folder / "texts.csv", index=False)
        bin_dir = venv / "bin"
        ready = [seconds_to_ready([str(bin_dir / "finsent-serve")], folder) for _ in range(args.runs)]
        one_text = [str(bin_dir / "finsent-predict"), "Fed holds rates steady"]
        predict = [seconds_to_run(one_text, folder) for _ in range(args.runs)]
        # This environment (the full install) runs this checkout's package.
        full = [sys.executable, "-m", "finsent.inference.predict"]
        for name, command in (("serve", [str(bin_dir / "finsent-predict")]), ("full", full)):
            env = {**os.environ, "PYTHONPATH": str(PROJECT / "src") if name == "full" else ""}
            subprocess.run(
                [*command, "-i", "texts.csv", "-o", f"{name}.csv"],
                cwd=folder,
                check=True,
                env=env,
                capture_output=True,
            )
        identical = (folder / "serve.csv").read_bytes() == (folder / "full.csv").read_bytes()
        results = {
            "venv_mb": size_mb(venv),
            "serve_seconds_to_ready": ready,
            "serve_seconds_to_ready_median": statistics.median(ready),
            "predict_one_text_seconds": predict,
            "predict_one_text_seconds_median": statistics.median(predict),
            "texts": len(read_jsonl(args.texts)),
            "answers_identical_to_full_install": identical,
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.output:
        write_record(args.output, results)


if __name__ == "__main__":
    main()
