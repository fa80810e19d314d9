"""Temperature scaling and the expected calibration error, on synthetic logits whose calibration is known."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax

from finsent.calibration import fit_temperature, scaled_log_loss
from finsent.errors import FinsentError
from finsent.metrics import expected_calibration_error, reliability_bins
from finsent.temperature import CALIBRATION_FILE, load_temperature, save_temperature


def calibrated_logits(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): probabilities that are right as often as they say."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (rows, 3))
    cumulative = softmax(logits, axis=1).cumsum(axis=1)
    labels = (rng.random(rows)[:, None] > cumulative).sum(axis=1)
    return logits, labels


def test_the_fitted_temperature_undoes_a_known_overconfidence():
    logits, labels = calibrated_logits(20_000)
    overconfident = 3 * logits
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(3, rel=0.05)
    before, after = (scaled_log_loss(overconfident, labels, t) for t in (1.0, temperature))
    assert after < before - 0.2
    assert after == pytest.approx(scaled_log_loss(logits, labels, 1.0), abs=1e-3)
    assert fit_temperature(logits, labels) == pytest.approx(1, rel=0.05)  # already calibrated
    assert fit_temperature(logits / 2, labels) == pytest.approx(0.5, rel=0.05)  # underconfident


def test_a_set_the_logits_separate_gets_a_small_finite_temperature():
    # Log-loss falls towards 0 as T does, with no minimum: the search stops within its bounds.
    logits = np.array([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    assert 0.05 <= fit_temperature(logits, np.array([0, 1, 2])) < 0.2


def test_expected_calibration_error_is_near_zero_when_calibrated_and_large_when_overconfident():
    logits, labels = calibrated_logits(20_000)
    assert expected_calibration_error(labels, softmax(logits, axis=1)) < 0.01
    assert expected_calibration_error(labels, softmax(3 * logits, axis=1)) > 0.1


def test_expected_calibration_error_of_a_hand_computed_example():
    probabilities = np.array(
        [
            [0.90, 0.05, 0.05],  # confidence 0.90, right: bin 14 (13/15, 14/15]
            [0.92, 0.04, 0.04],  # 0.92, wrong: bin 14
            [0.10, 0.50, 0.40],  # 0.50, right: bin 8 (7/15, 8/15]
            [0.30, 0.25, 0.45],  # 0.45, wrong: bin 7 (6/15, 7/15]
        ]
    )
    labels = np.array([0, 1, 1, 0])
    expected_bins = pd.DataFrame(
        {"bin": [7, 8, 14], "confidence": [0.45, 0.5, 0.91], "accuracy": [0.0, 1.0, 0.5], "count": [1, 1, 2]}
    )
    pd.testing.assert_frame_equal(reliability_bins(labels, probabilities), expected_bins)
    # Rows weigh their bins: 1/4 * |0 - 0.45| + 1/4 * |1 - 0.5| + 2/4 * |0.5 - 0.91|.
    assert expected_calibration_error(labels, probabilities) == pytest.approx(0.4425, abs=1e-12)


def test_certain_predictions_fall_in_the_last_bin():
    probabilities = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    bins = reliability_bins(np.array([0, 2]), probabilities)
    assert bins.to_dict("records") == [{"bin": 15, "confidence": 1.0, "accuracy": 0.5, "count": 2}]
    assert expected_calibration_error(np.array([0, 2]), probabilities) == pytest.approx(0.5)


def test_the_temperature_reads_back_as_saved(tmp_path):
    save_temperature(tmp_path, 1.2345678901234567)
    assert load_temperature(tmp_path) == 1.2345678901234567
    assert json.loads((tmp_path / CALIBRATION_FILE).read_text()) == {"temperature": 1.2345678901234567}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "missing; every model folder has the temperature the train stage fitted on dev"),
        ("{not json", "not the JSON object that the pipeline writes"),
        ('{"T": 2}', "not the JSON object that the pipeline writes"),
        ("[2]", "not the JSON object that the pipeline writes"),
        ('{"temperature": 0}', "the temperature must be a positive number, not 0"),
        ('{"temperature": -1.5}', "the temperature must be a positive number, not -1.5"),
        ('{"temperature": "2"}', "the temperature must be a positive number, not '2'"),
        ('{"temperature": true}', "the temperature must be a positive number, not True"),
        ('{"temperature": NaN}', "the temperature must be a positive number, not nan"),
        ('{"temperature": Infinity}', "the temperature must be a positive number, not inf"),
    ],
)
def test_a_missing_or_wrong_calibration_file_is_one_line_naming_it(tmp_path, content, problem):
    if content is not None:
        (tmp_path / CALIBRATION_FILE).write_text(content)
    with pytest.raises(FinsentError) as raised:
        load_temperature(tmp_path)
    assert str(raised.value).startswith(f"{tmp_path / CALIBRATION_FILE}: {problem}")
    assert "\n" not in str(raised.value)
