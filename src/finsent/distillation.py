"""The teacher's outputs as files: its logits for train, dev and augmented copies of train.

The teacher stage writes them (small, and kept in git, so that a clone does not train the teacher
again), from one run or the ensemble of several (`ensemble_logits`), with the hash of the code that
made them (`teacher_code_sha256`); the tokenize stage reads them and joins them to the rows they
belong to, checking that they are the teacher's logits for exactly those rows.
"""

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import log_softmax, logsumexp

from finsent.config import LABELS, DistillParams
from finsent.errors import FinsentError
from finsent.provenance import code_sha256

LOGIT_COLUMNS = [f"logit_{name}" for name in LABELS]
SPLIT_FILES = {"train": "train.csv", "dev": "dev.csv"}
AUGMENTED_FILE = "augmented.csv"
"""In the teacher's folder: `copy`, `id` (of the train row it copies), `text` and the logit columns."""
MASK = "[MASK]"
"""A masked word in an augmented text, as the file holds it: each model reads its own tokenizer's mask
token there (`with_mask_token`), since the teacher's and the student's tokenizers may name it apart
(MPNet's `<mask>`, BERT's `[MASK]`)."""
_DECIMALS = 4  # logits to 1e-4: softmax probabilities change by under 1e-4, the files stay small
TEACHER_SCRIPT = Path("stages/teacher.py")
CODE_KEY = "code_sha256"
"""In metrics/teacher.json: `teacher_code_sha256` of the tree the teacher ran in."""


def teacher_code_sha256(root: Path = Path()) -> str:
    """SHA-256 of the teacher stage's script and the package modules it imports, in the tree at `root`.

    Its deps in dvc.yaml leave out the shared modules on purpose (a fix there must not retrain it), so
    the stage records this beside its metrics and `finsent-results` says when the code has changed.
    """
    return code_sha256(root / TEACHER_SCRIPT, root)


def ensemble_logits(runs: list[np.ndarray]) -> np.ndarray:
    """The logits of several runs' averaged class probabilities: the log of their mean (rows, classes).

    Computed from each run's log-probabilities (logsumexp), never as log(mean): a probability that
    underflows to 0 would give -inf. One run's logits are returned as they are.
    """
    if len(runs) == 1:
        return runs[0]
    return logsumexp([log_softmax(logits, axis=1) for logits in runs], axis=0) - np.log(len(runs))


def write_logits(file: Path, rows: pd.DataFrame, logits: np.ndarray) -> None:
    """`rows` (their `id`, and `copy` and `text` for augmented ones) with the teacher's logits, as CSV."""
    values = dict(zip(LOGIT_COLUMNS, np.asarray(logits).T, strict=True))
    rows.assign(**values).to_csv(file, index=False, float_format=f"%.{_DECIMALS}f")


def _read(file: Path, columns: list[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(file, dtype={"text": str}, keep_default_na=False)
    except FileNotFoundError:
        raise FinsentError(f"{file}: missing (run `dvc repro teacher`)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise FinsentError(f"{file}: not a readable CSV file ({error.__class__.__name__})") from None
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise FinsentError(f"{file}: missing column(s) {', '.join(missing)}")
    logits = frame[LOGIT_COLUMNS].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(logits).all():
        row = int((~np.isfinite(logits)).any(axis=1).argmax())
        raise FinsentError(f"{file}: row {row + 1}: a logit is not a finite number")
    return frame


def read_split_logits(folder: Path, split: str, ids: pd.Series) -> np.ndarray:
    """The teacher's logits for the rows `ids` of `split`, which must be the rows it labelled, in order."""
    file = Path(folder) / SPLIT_FILES[split]
    frame = _read(file, ["id", *LOGIT_COLUMNS])
    if len(frame) != len(ids):
        raise FinsentError(
            f"{file}: {len(frame)} rows, but the {split} split has {len(ids)}: the teacher labelled "
            f"other data (run `dvc repro teacher`)"
        )
    differs = frame["id"].to_numpy() != ids.to_numpy()
    if differs.any():
        row = int(differs.argmax())
        raise FinsentError(
            f"{file}: row {row + 1} is id {frame['id'].iloc[row]}, where the {split} split has id "
            f"{ids.iloc[row]}: not the teacher's logits for these rows, in this order"
        )
    return frame[LOGIT_COLUMNS].to_numpy(dtype=np.float32)


def read_augmented(folder: Path, copies: int, train_ids: pd.Series) -> pd.DataFrame:
    """The first `copies` augmented copies of train (`id`, `text`, logit columns), checked against it."""
    file = Path(folder) / AUGMENTED_FILE
    frame = _read(file, ["copy", "id", "text", *LOGIT_COLUMNS])
    available = frame["copy"].nunique()
    if copies > available:
        raise FinsentError(
            f"distill.augmented_copies: {copies}, but {file} holds {available} "
            f"(raise teacher.augment.copies and run `dvc repro teacher`)"
        )
    chosen = frame[frame["copy"] < copies]
    for copy, rows in chosen.groupby("copy"):
        if not np.array_equal(rows["id"].to_numpy(), train_ids.to_numpy()):
            raise FinsentError(f"{file}: copy {copy} does not hold one row per train row, in order")
    return chosen.reset_index(drop=True)


def with_mask_token(augmented: pd.DataFrame, mask_token: str | None) -> pd.DataFrame:
    """Augmented rows with each MASK written as `mask_token`, a tokenizer's (None: as they are)."""
    if mask_token is None or mask_token == MASK:
        return augmented
    return augmented.assign(text=augmented["text"].str.replace(MASK, mask_token, regex=False))


def distillation_rows(
    train: pd.DataFrame, teacher_dir: Path, params: DistillParams, mask_token: str | None
) -> tuple[pd.DataFrame, np.ndarray]:
    """Train's rows then the augmented copies' (label None, MASK as `mask_token`: the student
    tokenizer's), and the teacher's logits of each row."""
    logits = [read_split_logits(teacher_dir, "train", train["id"])]
    frames = [train[["id", "text", "label"]]]
    if params.augmented_copies:
        augmented = with_mask_token(
            read_augmented(teacher_dir, params.augmented_copies, train["id"]), mask_token
        )
        frames.append(augmented[["id", "text"]].assign(label=None))
        logits.append(augmented[LOGIT_COLUMNS].to_numpy(dtype=np.float32))
    return pd.concat(frames, ignore_index=True), np.concatenate(logits)
