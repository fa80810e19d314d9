"""A sweep's runs grouped by what they change from params.yaml, with the spread over seeds.

    finsent-sweep-summary --rev REV [--rev REV ...] [-n COMMITS]

Reads `dvc exp show --json` for the commits given (and the N - 1 before each, with `-n N`): each
commit's own run and its experiments. Runs are grouped by the training params (model, tokenize, lora,
train) in which they differ from the workspace's params.yaml, the seed left aside. A run's params are
those it recorded beside its metrics (`metrics/train/params.yaml`), since a commit's params.yaml can
be newer than its run. Each group gets one row of a Markdown table: runs, seeds, dev macro-F1 mean
and range, dev accuracy, the epochs chosen. `scripts/exp_table.sh` lists
the runs one by one; this is the view that says whether a change beats the spread of seeds.

Dev only: every choice is made on dev, and an experiment run up to `train` carries its base commit's
validation metrics, which are not its own.
"""

import argparse
import json
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML

from finsent.cli import run_cli
from finsent.config import TRAINING_SECTIONS
from finsent.errors import FinsentError

TRAIN_METRICS = "metrics/train/metrics.json"
TRAIN_PARAMS = "metrics/train/params.yaml"


@dataclass(frozen=True)
class Run:
    name: str
    change: str
    seed: int
    dev_macro_f1: float
    dev_accuracy: float
    best_epoch: int


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"train": {"epochs": 3}} as {"train.epochs": 3}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


KEYS_ADDED_SINCE = {
    "model.layers": None,
    "tokenize.url_replacement": None,
    "tokenize.cashtag_replacement": None,
    "train.num_processes": 1,
    "train.focal_gamma": 0.0,
    "train.cpu_bf16": False,
    "distill.enabled": False,
    "distill.alpha": 1.0,
    "distill.temperature": 1.0,
    "distill.augmented_copies": 0,
    "teacher.augment.method": "word_dropout",
}
"""Training params added after runs were recorded, with the value those runs had: the one place where an
older record (metrics/train/params.yaml) is completed. Any other missing key reads as `unrecorded`."""
KEYS_RENAMED = {"teacher.augment.word_dropout": "teacher.augment.rate"}
"""Training params renamed after runs were recorded: an older record's key, by its name now."""


def training_params(raw: dict) -> dict:
    """A run's training params, flat; `teacher: unrecorded` for a distilled run with no teacher record."""
    recorded = flatten({section: raw.get(section) or {} for section in TRAINING_SECTIONS})
    params = KEYS_ADDED_SINCE | {KEYS_RENAMED.get(key, key): value for key, value in recorded.items()}
    if params["distill.enabled"] and not raw.get("teacher"):
        params["teacher"] = "unrecorded"
    return params


def describe_change(params: dict, defaults: dict) -> str:
    """The params that differ from `defaults` (both from `training_params`), as `key=value`, seed aside.

    The teacher's count only for a run that distils: the others owe their model nothing to it.
    """
    unrecorded = object()
    teacher_counts = params["distill.enabled"] and "teacher" not in params
    changes = [
        f"{key}={'unrecorded' if value is unrecorded else 'null' if value is None else value}"
        for key in sorted(params.keys() | defaults.keys())
        if key != "train.seed"
        and (teacher_counts or not key.startswith("teacher."))
        and (value := params.get(key, unrecorded)) != defaults.get(key)
    ]
    return " ".join(changes) or "none (params.yaml)"


def recorded_params(rev: str) -> dict | None:
    """The params a revision's train stage ran with, as it recorded them; None if it has no record."""
    shown = subprocess.run(["git", "show", f"{rev}:{TRAIN_PARAMS}"], capture_output=True, text=True)
    return YAML(typ="safe").load(shown.stdout) if shown.returncode == 0 else None


def runs_of(shown: list[dict], defaults: dict) -> list[Run]:
    """Every finished run in `dvc exp show --json` output, once (the same run can be under two revisions)."""
    found = {}
    for commit in shown:
        if commit["rev"] == "workspace":
            continue
        entries = [(commit["rev"][:7], commit["rev"], commit["data"])]
        for experiment in commit.get("experiments") or []:
            entries += [
                (rev["name"] or rev["rev"][:7], rev["rev"], rev["data"]) for rev in experiment["revs"]
            ]
        for name, rev, data in entries:
            if (data or {}).get("rev") == "workspace":
                # A running experiment: DVC shows its partial metrics from the folder it runs in, and
                # its rev is the queue's copy of its base, whose record is the base's run.
                continue
            summary = ((data or {}).get("metrics") or {}).get(TRAIN_METRICS, {}).get("data")
            params = recorded_params(rev) if summary and "dev" in summary else None
            if params is None:
                continue  # queued, failed, or a commit without a run
            params = training_params(params)
            run = Run(
                name=name,
                change=describe_change(params, defaults),
                seed=params["train.seed"],
                dev_macro_f1=summary["dev"]["macro_f1"],
                dev_accuracy=summary["dev"]["accuracy"],
                best_epoch=summary["best_epoch"],
            )
            # The same params, seed and dev metrics are one run seen twice: an experiment that changes
            # a later stage only (export) carries its base's train metrics, and a rerun on the same
            # machine reproduces them.
            found.setdefault((run.change, run.seed, run.dev_macro_f1, run.dev_accuracy), run)
    return list(found.values())


def summary_table(runs: list[Run]) -> str:
    """One Markdown row a change, best mean dev macro-F1 first."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.change, []).append(run)
    rows = sorted(groups.items(), key=lambda item: -statistics.mean(r.dev_macro_f1 for r in item[1]))
    lines = [
        "| change from params.yaml | runs | seeds | dev macro-F1, mean | range | dev accuracy, mean "
        "| epoch chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for change, group in rows:
        f1 = [run.dev_macro_f1 for run in group]
        lines.append(
            f"| `{change}` | {len(group)} | {', '.join(str(run.seed) for run in group)} "
            f"| {statistics.mean(f1):.3f} | {min(f1):.3f} to {max(f1):.3f} "
            f"| {statistics.mean(run.dev_accuracy for run in group):.3f} "
            f"| {', '.join(str(run.best_epoch) for run in group)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rev", action="append", required=True, help="a commit whose experiments to read")
    parser.add_argument("-n", "--num", type=int, default=1, help="commits to read from each --rev back")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="the defaults")
    args = parser.parse_args(argv)
    command = ["dvc", "exp", "show", "--json", "--no-fetch", "--num", str(args.num)]
    for rev in args.rev:
        command += ["--rev", rev]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        last_line = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise FinsentError(f"dvc exp show failed: {last_line}")
    try:
        defaults = training_params(YAML(typ="safe").load(args.params.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise FinsentError(f"{args.params}: file not found") from None
    runs = runs_of(json.loads(result.stdout), defaults)
    if not runs:
        raise FinsentError(f"no finished runs under {', '.join(args.rev)}")
    print(summary_table(runs))


def cli() -> None:
    """The `finsent-sweep-summary` command: main() with expected errors as one line."""
    run_cli(main)
