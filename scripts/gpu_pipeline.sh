#!/usr/bin/env bash
# The full default pipeline on a GPU machine that has PyTorch but perhaps not the rest, and no network.
#
#   scripts/gpu_pipeline.sh [--teacher] [WHEEL_DIR]
#
# --teacher retrains the teacher stage (`dvc repro --force`); without it the teacher's outputs in git
# are used as they are (the stage is up to date in a clone).
# WHEEL_DIR holds wheels brought along for what the machine lacks; one whose package is installed
# already is skipped, so the machine's own torch and CUDA stay as they are. Fetch them where pip
# works, for the GPU machine's Python and platform, as docs/training.md's "On a GPU" section shows.
# Where the hub is out of reach, set FINSENT_DATA_MIRROR. Prints each stage's wall time (the train and
# teacher stages log their samples/s) and the validation metrics; outputs and dvc.lock are those of a
# plain `dvc repro`. Then, on the exported model: bulk scoring (finsent-score with the PyTorch backend on
# the GPU, and with ONNX Runtime's CUDA provider where onnxruntime-gpu is installed) and the inference
# benchmark (PyTorch on the GPU, the ONNX backends on the CPU). Results: benchmarks/gpu/*.json (each
# with the command, commit, date and machine), the stages' times in benchmarks/gpu/stages.json.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
force_teacher=()
if [[ ${1:-} == --teacher ]]; then
  force_teacher=(--force)
  shift
fi

if [[ $# -ge 1 ]]; then
  mapfile -t missing < <("$python" - "$1" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    try:
        version(wheel.name.split("-")[0])
    except PackageNotFoundError:
        print(wheel)
PY
  )
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "installing ${#missing[@]} missing packages from $1"
    "$python" -m pip install --quiet --no-index --no-deps --no-cache-dir "${missing[@]}"
  fi
fi

# dvc.yaml runs `python`: where only python3 exists, name it so.
if ! command -v python >/dev/null; then
  shim=$(mktemp -d)
  ln -s "$(command -v "$python")" "$shim/python"
  PATH="$shim:$PATH"
fi

"$python" -c 'import torch; print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (no CUDA device)")'
mkdir -p benchmarks/gpu
times=()
for stage in download teacher tokenize train evaluate export; do
  start=$EPOCHREALTIME
  forced=()
  if [[ $stage == teacher ]]; then forced=("${force_teacher[@]}"); fi
  "$python" -m dvc repro --single-item "${forced[@]}" "$stage"
  seconds=$(awk -v s="$start" -v e="$EPOCHREALTIME" 'BEGIN { printf "%.1f", e - s }')
  echo "stage $stage: $seconds s"
  times+=("\"$stage\": $seconds")
done
(IFS=,; echo "{${times[*]}}") > benchmarks/gpu/stages.json
PYTHONPATH=src "$python" scripts/benchmark_bulk_scoring.py --texts 100000 --output benchmarks/gpu/bulk_scoring.json
PYTHONPATH=src "$python" scripts/benchmark_inference.py --gpu --backends pytorch onnx_int8 --clients 32 \
  --output benchmarks/gpu/inference.json
"$python" - <<'PY'
import json

teacher = json.load(open("metrics/teacher.json"))
print(f"teacher: dev macro-F1 {teacher['dev']['macro_f1']:.4f}, accuracy {teacher['dev']['accuracy']:.4f}; "
      f"validation macro-F1 {teacher['validation']['macro_f1']:.4f}, accuracy {teacher['validation']['accuracy']:.4f}")
train = json.load(open("metrics/train/metrics.json"))
validation = json.load(open("metrics/validation.json"))
print(f"dev: macro-F1 {train['dev']['macro_f1']:.4f}, accuracy {train['dev']['accuracy']:.4f}")
print(f"validation: macro-F1 {validation['macro_f1']:.4f}, accuracy {validation['accuracy']:.4f}")
PY
