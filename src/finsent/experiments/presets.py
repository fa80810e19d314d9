"""Presets by name: a file in presets/ holds a set of params.yaml values; `finsent-preset NAME` prints
them as the `-S KEY=VALUE` words of `dvc exp run`:

    dvc exp run $(finsent-preset fast)
    dvc exp run --queue -n fast-s1 $(finsent-preset fast) -S train.seed=1

DVC's Hydra composition would give `dvc exp run -S preset=fast` itself, but it writes params.yaml anew
from conf/ on every such run (its comments gone, an edit made there lost) and `dvc repro` would not
compose: here params.yaml stays the one file that is edited and run, and a later `-S` of the same key
wins over the preset's.
"""

import argparse
from pathlib import Path

from finsent.cli import run_cli
from finsent.config import read_yaml
from finsent.errors import FinsentError
from finsent.experiments.sweep_summary import flatten

PRESETS_DIR = Path("presets")


def preset_values(
    name: str, presets_dir: Path = PRESETS_DIR, params_file: Path = Path("params.yaml")
) -> dict:
    """The preset's values, flat (`train.epochs`), each checked to be a key of params.yaml."""
    file = presets_dir / f"{name}.yaml"
    if not file.is_file():
        known = ", ".join(sorted(path.stem for path in presets_dir.glob("*.yaml"))) or "none"
        raise FinsentError(f"{file}: no such preset (presets: {known})")
    values, params = read_yaml(file), flatten(read_yaml(params_file) or {})
    if not isinstance(values, dict) or not values:
        raise FinsentError(f"{file}: not a mapping of params.yaml sections to values")
    flat = flatten(values)
    unknown = sorted(flat.keys() - params.keys())
    if unknown:
        raise FinsentError(f"{file}: {', '.join(unknown)}: not a key of {params_file}")
    return flat


def override(key: str, value) -> str:
    """`key=value` as one word of `dvc exp run -S` (Hydra's override grammar)."""
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if isinstance(value, list):
        return f"{key}=[{','.join(map(str, value))}]"
    return f"{key}={value}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].rstrip(":") + ".")
    parser.add_argument("name", help="a preset: the stem of a file in presets/")
    args = parser.parse_args(argv)
    words = [word for key, value in preset_values(args.name).items() for word in ("-S", override(key, value))]
    print(" ".join(words))


def cli() -> None:
    """The `finsent-preset` command: main() with expected errors as one line."""
    run_cli(main)
