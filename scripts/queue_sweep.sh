#!/usr/bin/env bash
# Queue one DVC experiment per line of a sweep file, run them JOBS at a time, then list them all.
#
#   scripts/queue_sweep.sh SWEEP_FILE [JOBS] [MAX_SECONDS] > sweep.csv
#
# A line of SWEEP_FILE is an experiment name, then what `dvc exp run` takes (a target, `-S` overrides),
# where `preset=NAME` stands for that preset's overrides (presets/NAME.yaml), for example
#   lr-3e-4  train preset=minilm -S train.learning_rate=3e-4
# ('#' starts a comment; a later `-S` of a key wins over the preset's). Experiments run in queue order; after MAX_SECONDS (0: no limit) the ones
# still running are killed and those not started are dropped, so that a short lease of a machine
# still yields every finished result. Prints scripts/exp_table.sh as CSV, best dev macro-F1 first.
set -euo pipefail
cd "$(dirname "$0")/.."
sweep=$1 jobs=${2:-1} max_seconds=${3:-0}
# The commit the experiments start from: the table lists its experiments even if HEAD moves meanwhile.
base=$(git rev-parse HEAD)
# Overrides are split into words below, never globbed: `-S lora.target_modules=[query,value]` stays.
set -f

while read -r name overrides; do
  [[ -z $name || $name == \#* ]] && continue
  words=()
  for word in $overrides; do
    if [[ $word == preset=* ]]; then
      # shellcheck disable=SC2207  # the preset's words: -S key=value ...
      words+=($(finsent-preset "${word#preset=}"))
    else
      words+=("$word")
    fi
  done
  dvc exp run --queue --name "$name" "${words[@]}" </dev/null >&2
done <"$sweep"

dvc queue start --jobs "$jobs" >&2
start=$SECONDS
# (status read whole first: grep -q quitting early would break the pipe under pipefail)
while status=$(dvc queue status 2>/dev/null) && grep -qE '\b(Queued|Running)\b' <<<"$status"; do
  if ((max_seconds > 0 && SECONDS - start > max_seconds)); then
    echo "time is up after ${max_seconds} s: dropping the experiments that have not finished" >&2
    dvc queue remove --queued >&2
    dvc queue stop --kill >&2
    break
  fi
  sleep 5
done
dvc queue status >&2
scripts/exp_table.sh --csv --rev "$base"
