"""Tables the evaluate stage writes for dvc.yaml's plots, beside plots/predictions.csv."""

import pandas as pd


def precision_recall_table(curves: dict[str, pd.DataFrame], per_class: dict[str, dict]) -> pd.DataFrame:
    """All classes' precision-recall curves in one table: class, recall, precision, average_precision.

    `curves` as `finsent.metrics.precision_recall_curves` gives them, `per_class` as the `per_class`
    of `classification_metrics` does. A class's average precision is repeated on each of its rows
    because a DVC plot reads one table, and the legend of the class's panel shows it.
    """
    frames = [
        curve.assign(**{"class": name, "average_precision": round(per_class[name]["average_precision"], 5)})
        for name, curve in curves.items()
    ]
    return pd.concat(frames, ignore_index=True)[["class", "recall", "precision", "average_precision"]]
