"""The pipeline's wall time, stage by stage: `dvc repro --single-item STAGE` for each stage in order (the
teacher's outputs come from git and it is skipped when up to date), as `make pipeline` runs them.

    PYTHONPATH=src:. python scripts/benchmark_pipeline.py --output benchmarks/pipeline.json
    PYTHONPATH=src:. python scripts/benchmark_pipeline.py --force train evaluate export   # rerun those

Each stage's own lines go to stderr as it runs; a stage that is up to date takes DVC's check alone.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

from ruamel.yaml import YAML

from finsent.experiments.benchmark_record import write_record


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--force", nargs="*", default=[], metavar="STAGE", help="stages to rerun even if up to date"
    )
    parser.add_argument("--output", type=Path, help="also write the results here, as JSON")
    args = parser.parse_args()
    stages = list(YAML(typ="safe").load(Path("dvc.yaml").read_text(encoding="utf-8"))["stages"])
    seconds = {}
    for stage in stages:
        forced = ["--force"] if stage in args.force else []
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", *forced, stage])
        seconds[stage] = time.perf_counter() - start
        print(f"stage {stage}: {seconds[stage]:.1f} s", file=sys.stderr, flush=True)
        if result.returncode:
            raise SystemExit(f"dvc repro {stage} failed with status {result.returncode}")
    total = sum(seconds.values())
    print(f"{total:.0f} s in all: " + ", ".join(f"{stage} {value:.0f} s" for stage, value in seconds.items()))
    if args.output:
        write_record(args.output, {"stage_seconds": seconds, "total_seconds": total, "forced": args.force})


if __name__ == "__main__":
    main()
