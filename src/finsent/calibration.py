"""Temperature scaling (Guo et al., 2017): the logits divided by one scalar T before the softmax.

T is fitted on dev by the train stage, after the epoch is chosen, and saved beside the model
(`finsent.temperature`); the export stage carries it into its folder, and every predictor applies it.
Dividing by T keeps each text's label and makes its probabilities say how often that label is right.
"""

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

# T is searched within these bounds: see `fit_temperature`.
_LOG_TEMPERATURE_BOUNDS = (math.log(0.05), math.log(20.0))


def scaled_log_loss(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """The mean negative log-probability of each row's label, under softmax(logits / temperature)."""
    log_probabilities = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-log_probabilities[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises the log-loss of softmax(logits / T) on `labels`."""
    # Searched on log T: T stays positive with no constraint, and T and 1/T (over- and
    # under-confidence by one factor) are as far from 1. Bounded: where the logits rank every row's
    # label first, the log-loss keeps falling as T goes to 0, and has no minimum to find.
    result = minimize_scalar(
        lambda log_t: scaled_log_loss(logits, labels, math.exp(log_t)),
        bounds=_LOG_TEMPERATURE_BOUNDS,
        method="bounded",
    )
    return math.exp(result.x)
