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
import statistics
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML

from finsent import dvc_access
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


ABSENT = "absent"
"""How a change reads where a run's record lacks a key (or a whole section) that the other side holds."""


def training_params(raw: dict) -> dict:
    """The training sections (`TRAINING_SECTIONS`) of a params file, flat, as far as it holds them."""
    return flatten({section: raw[section] for section in TRAINING_SECTIONS if section in raw})


def describe_change(params: dict, defaults: dict) -> str:
    """The params in which a run differs from `defaults` (both from `training_params`), as `key=value`,
    the seed aside: records of different times are compared by what they hold, a key that one side
    lacks being `absent`, and a section the run lacks altogether one `section=absent`.

    The teacher's keys only for a run that distils: the others owe their model nothing to it.
    """
    if not params.get("distill.enabled"):
        params, defaults = (
            {k: v for k, v in side.items() if k.split(".")[0] != "teacher"} for side in (params, defaults)
        )
    changes = {
        key: params.get(key, ABSENT)
        for key in params.keys() | defaults.keys()
        if key != "train.seed" and params.get(key, ABSENT) != defaults.get(key, ABSENT)
    }
    held = {key.split(".")[0] for key in params}
    for key in [key for key in changes if key.split(".")[0] not in held]:
        del changes[key]
        changes[key.split(".")[0]] = ABSENT
    words = [f"{key}={'null' if value is None else value}" for key, value in sorted(changes.items())]
    return " ".join(words) or "none (params.yaml)"


def recorded_params(rev: str) -> dict | None:
    """The params a revision's train stage ran with, as it recorded them; None if it has no record."""
    return dvc_access.yaml_at(TRAIN_PARAMS, rev, missing_ok=True)


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
                seed=params.get("train.seed"),
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
    shown = dvc_access.experiments(args.rev, args.num)
    try:
        defaults = training_params(YAML(typ="safe").load(args.params.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise FinsentError(f"{args.params}: file not found") from None
    runs = runs_of(shown, defaults)
    if not runs:
        raise FinsentError(f"no finished runs under {', '.join(args.rev)}")
    print(summary_table(runs))


def cli() -> None:
    """The `finsent-sweep-summary` command: main() with expected errors as one line."""
    run_cli(main)


if __name__ == "__main__":
    cli()
