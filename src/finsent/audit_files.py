"""The audit stage's outputs as files: the rows of each split whose label it doubts.

The audit stage writes them (`finsent.audit`, kept in git as the teacher's outputs are); the tokenize
stage reads train's to leave those rows out of training (`tokenize.drop_doubtful`), the evaluate stage
validation's to score the served model on the labels the audit trusts as well.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from finsent.errors import FinsentError
from finsent.metrics import headline_metrics
from finsent.provenance import code_sha256

DOUBTFUL_FILES = {"train": "train.csv", "validation": "validation.csv"}
"""In the audit's folder: one file a split, a row a doubtful row, the least trustworthy label first."""
DOUBTFUL_COLUMNS = ["id", "text", "label", "suggested", "quality"]
"""The row's id and text, its given label, the label the probabilities suggest (their top class) and
the label's quality score (cleanlab's self-confidence: the probability of the given label)."""
NOISE_FILE = "noise_matrix.csv"
"""In the audit's folder: the estimated noise matrix of train, one row a (true, given) pair of labels."""
AUDIT_SCRIPT = Path("stages/audit.py")


def audit_code_sha256(root: Path = Path()) -> str:
    """SHA-256 of the audit stage's script and the package modules it imports, in the tree at `root`:
    recorded beside its figures (`code_sha256`), since its deps leave out the shared modules (dvc.yaml)."""
    return code_sha256(root / AUDIT_SCRIPT, root)


def write_doubtful(file: Path, doubtful: pd.DataFrame) -> None:
    doubtful[DOUBTFUL_COLUMNS].to_csv(file, index=False)


def read_doubtful(file: Path) -> pd.DataFrame:
    """A split's doubtful rows as the audit stage wrote them; what makes the file unusable, as one line."""
    try:
        frame = pd.read_csv(file, dtype={"text": str, "label": str, "suggested": str}, keep_default_na=False)
    except FileNotFoundError:
        raise FinsentError(f"{file}: missing (the audit stage writes it: `make audit`)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise FinsentError(f"{file}: not a readable CSV file ({error.__class__.__name__})") from None
    missing = [column for column in DOUBTFUL_COLUMNS if column not in frame.columns]
    if missing:
        raise FinsentError(f"{file}: missing column(s) {', '.join(missing)}")
    ids = pd.to_numeric(frame["id"], errors="coerce")
    not_whole = (ids != ids.round()).to_numpy()  # NaN (not a number) too
    if not_whole.any():
        row = int(not_whole.argmax())
        raise FinsentError(f"{file}: row {row + 1}: id {frame['id'].iloc[row]!r} is not a whole number")
    return frame.assign(id=ids.astype(np.int64))


def doubtful_mask(file: Path, split: str, ids: pd.Series) -> np.ndarray:
    """Whether each row of `split` (its `ids`, in order) is among the doubtful rows of `file`; every id
    there must be a row of the split, or the audit was made on other data."""
    doubtful = read_doubtful(file)["id"]
    unknown = ~doubtful.isin(ids)
    if unknown.any():
        raise FinsentError(
            f"{file}: id {doubtful[unknown].iloc[0]} is not a row of the {split} split: the audit was made "
            f"on other data (run `make audit`)"
        )
    return ids.isin(doubtful).to_numpy()


def drop_doubtful(
    rows: pd.DataFrame, logits: np.ndarray | None, file: Path, train_ids: pd.Series
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """`rows` (train's, then any augmented copies, which carry their train row's id) without those the
    audit doubts in `file`, and their `logits` (the teacher's, one row a row; None: none)."""
    doubtful = train_ids[doubtful_mask(file, "train", train_ids)]
    kept = ~rows["id"].isin(doubtful).to_numpy()
    return rows[kept].reset_index(drop=True), None if logits is None else logits[kept]


def trusted_label_metrics(labels: np.ndarray, probabilities: np.ndarray, doubtful: np.ndarray) -> dict:
    """Macro-F1 and accuracy on the rows whose label the audit trusts (`doubtful` False), and their number."""
    trusted = ~doubtful
    headline = headline_metrics(labels[trusted], probabilities[trusted])
    return {"macro_f1": headline["macro_f1"], "accuracy": headline["accuracy"], "rows": int(trusted.sum())}
