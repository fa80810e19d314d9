"""Classification metrics from true labels and predicted probabilities (scikit-learn underneath)."""

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_recall_fscore_support,
)

from finsent.config import LABELS, PROBABILITY_COLUMNS

_CLASS_IDS = list(range(len(LABELS)))

SELECTION_METRIC = "macro_f1"
"""What chooses a model on dev (an epoch, a sweep's params): Neutral is two thirds of the data."""
DEV_METRICS = ("macro_f1", "accuracy", "log_loss")
"""The dev metrics the train stage logs at each epoch and keeps for the chosen one."""
CALIBRATION_BINS = 15
"""Equal-width confidence bins of the expected calibration error, as Guo et al. (2017) count them: a
constant, so that every ECE the pipeline reports is comparable with every other."""


def reliability_bins(labels: np.ndarray, probabilities: np.ndarray) -> pd.DataFrame:
    """Each non-empty confidence bin: `bin` (1 to CALIBRATION_BINS), mean `confidence` (the top
    probability), `accuracy` (share of its rows whose top class is the label) and `count` of rows.

    Bin b holds confidences in ((b - 1) / CALIBRATION_BINS, b / CALIBRATION_BINS]. Written here:
    scikit-learn's calibration_curve is for binary classifiers only.
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0, 1, CALIBRATION_BINS + 1)
    rows = pd.DataFrame(
        {
            "bin": np.digitize(confidence, edges[1:-1], right=True) + 1,
            "confidence": confidence,
            "correct": correct,
        }
    )
    table = rows.groupby("bin").agg(
        confidence=("confidence", "mean"), accuracy=("correct", "mean"), count=("correct", "size")
    )
    return table.reset_index()


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean gap between accuracy and confidence over the bins of `reliability_bins`, weighted by rows."""
    bins = reliability_bins(labels, probabilities)
    return float((bins["count"] * (bins["accuracy"] - bins["confidence"]).abs()).sum() / bins["count"].sum())


def headline_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1 (the headline: Neutral is two thirds of the data), weighted-F1, log-loss and
    expected calibration error."""
    predicted = probabilities.argmax(axis=1)
    return {
        "macro_f1": float(f1_score(labels, predicted, labels=_CLASS_IDS, average="macro")),
        "accuracy": float(accuracy_score(labels, predicted)),
        "weighted_f1": float(f1_score(labels, predicted, labels=_CLASS_IDS, average="weighted")),
        "log_loss": float(log_loss(labels, probabilities, labels=_CLASS_IDS)),
        "expected_calibration_error": expected_calibration_error(labels, probabilities),
    }


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """Headline metrics plus precision, recall, F1, support and average precision for each class."""
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, probabilities.argmax(axis=1), labels=_CLASS_IDS, zero_division=0
    )
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "average_precision": float(average_precision_score(labels == i, probabilities[:, i])),
        }
        for i, name in enumerate(LABELS)
    }
    return {**headline_metrics(labels, probabilities), "per_class": per_class}


def precision_recall_curves(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, pd.DataFrame]:
    """One-vs-rest precision-recall curve of each class, as `recall`, `precision` columns."""
    curves = {}
    for i, name in enumerate(LABELS):
        precision, recall, _ = precision_recall_curve(labels == i, probabilities[:, i])
        curves[name] = pd.DataFrame({"recall": recall, "precision": precision}).round(5)
    return curves


def predictions_table(ids, labels: np.ndarray, probabilities: np.ndarray) -> pd.DataFrame:
    """One row per example: id, actual and predicted class names, and each class's probability."""
    names = np.array(LABELS)
    return pd.DataFrame(
        {
            "id": ids,
            "actual": names[labels],
            "predicted": names[probabilities.argmax(axis=1)],
            **dict(zip(PROBABILITY_COLUMNS, probabilities.round(6).T, strict=True)),
        }
    )
