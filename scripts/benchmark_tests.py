"""How long the test suite takes: pytest as `make test-fast` runs it (without the tests marked slow) and
as `make test` runs it (all of them), each timed end to end, with pytest's own summary line.

    PYTHONPATH=src:. python scripts/benchmark_tests.py --output benchmarks/tests.json
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

from finsent.experiments.benchmark_record import write_record

RUNS = {"`make test-fast`": ["-m", "not slow"], "`make test`'s pytest": []}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, help="also write the results here, as JSON")
    args = parser.parse_args()
    results = {}
    for name, options in RUNS.items():
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options],
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
        results[name] = {"seconds": seconds, "exit_status": result.returncode, "summary": summary}
        print(f"{name}: {seconds:.0f} s, {summary}", flush=True)
    if args.output:
        write_record(args.output, results)


if __name__ == "__main__":
    main()
