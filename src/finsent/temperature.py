"""The temperature a model's logits are divided by (`finsent.calibration` fits it), as a file of every
folder that holds a trained model (train and export outputs). Read at inference: no scipy here."""

import json
import math
from pathlib import Path

from finsent.errors import FinsentError

CALIBRATION_FILE = "calibration.json"
"""Beside the tokenizer in every folder that holds a trained model (train and export outputs)."""


def save_temperature(folder: Path, temperature: float) -> None:
    file = Path(folder) / CALIBRATION_FILE
    file.write_text(json.dumps({"temperature": temperature}) + "\n", encoding="utf-8")


def load_temperature(folder: Path) -> float:
    """The T that `save_temperature` wrote in `folder`. Its absence is an error: T = 1 would serve
    the uncalibrated probabilities without a word."""
    file = Path(folder) / CALIBRATION_FILE
    try:
        temperature = json.loads(file.read_text(encoding="utf-8"))["temperature"]
    except FileNotFoundError:
        raise FinsentError(
            f"{file}: missing; every model folder has the temperature the train stage fitted on dev "
            "(run `dvc repro`)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError):
        raise FinsentError(f"{file}: not the JSON object that the pipeline writes") from None
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 < temperature < math.inf
    ):
        raise FinsentError(f"{file}: the temperature must be a positive number, not {temperature!r}")
    return float(temperature)
