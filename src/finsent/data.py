"""The data set: fetched from the Hugging Face hub or a local mirror, checked, split, stored as JSONL."""

import hashlib
import json
import os
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from finsent.config import LABELS, DataParams, SplitFingerprint
from finsent.errors import FinsentError
from finsent.inference.texts import read_rows, shown

MIRROR_ENV = "FINSENT_DATA_MIRROR"
"""Environment variable naming a folder that holds the data set's CSV files; then the hub is not used."""

SOURCE_FILES = {"train": "sent_train.csv", "validation": "sent_valid.csv"}
"""The files of the hub repository, by split."""


def fetch_source_files(dataset: str, revision: str) -> dict[str, Path]:
    """Local paths of the data set's CSV files: from the mirror folder if one is set, else the hub."""
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        folder = Path(mirror)
        if not folder.is_dir():
            raise FinsentError(f"{MIRROR_ENV}={mirror}: no such folder")
        paths = {split: folder / name for split, name in SOURCE_FILES.items()}
        for path in paths.values():
            if path.is_dir():
                raise FinsentError(f"{path}: a folder, not a file, in the mirror folder")
            if not path.exists():
                raise FinsentError(f"{path}: file not found in the mirror folder")
        return paths

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return {
            split: Path(hf_hub_download(dataset, name, repo_type="dataset", revision=revision))
            for split, name in SOURCE_FILES.items()
        }
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else error.__class__.__name__
        raise FinsentError(
            f"cannot fetch {dataset}@{revision} from the Hugging Face hub ({reason}); "
            f"set {MIRROR_ENV} to a folder holding {' and '.join(SOURCE_FILES.values())}"
        ) from None


def read_source_csv(path: Path) -> pd.DataFrame:
    """Read one source CSV into `id`, `text`, `label` columns, rejecting anything malformed: by the rules
    that the commands read texts by (finsent.inference.texts), and every label a class id."""
    texts, labels = [], []
    known = {str(label_id) for label_id in range(len(LABELS))}
    for rows in read_rows(str(path), "text", ["label"]):
        unknown = next((i for i, label in enumerate(rows.others["label"]) if label not in known), None)
        if unknown is not None:
            raise FinsentError(
                f"{shown(str(path))}: line {rows.positions[unknown]}, column 'label': unknown label "
                f"{rows.others['label'][unknown]!r} (expected one of {', '.join(sorted(known))})"
            )
        texts += rows.texts
        labels += rows.others["label"]
    if not texts:
        raise FinsentError(f"{shown(str(path))}: no rows")
    return pd.DataFrame({"id": range(len(texts)), "text": texts, "label": [int(label) for label in labels]})


def to_jsonl(frame: pd.DataFrame) -> bytes:
    """The canonical bytes of a split: one JSON object a row, keys in a fixed order, UTF-8."""
    lines = (
        json.dumps({"id": int(i), "text": t, "label": int(y)}, ensure_ascii=False)
        for i, t, y in zip(frame["id"], frame["text"], frame["label"], strict=True)
    )
    return "".join(line + "\n" for line in lines).encode("utf-8")


def read_jsonl(path: Path) -> pd.DataFrame:
    """Read a split written by `to_jsonl`."""
    try:
        with open(path, encoding="utf-8") as lines:
            return pd.DataFrame([json.loads(line) for line in lines], columns=["id", "text", "label"])
    except FileNotFoundError:
        raise FinsentError(f"{path}: missing (the download stage writes it: `dvc repro download`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as error:
        raise FinsentError(f"{path}: not a split written by the download stage ({error})") from None


def fingerprint(frame: pd.DataFrame) -> SplitFingerprint:
    counts = frame["label"].value_counts()
    return SplitFingerprint(
        rows=len(frame),
        labels={name: int(counts.get(label_id, 0)) for label_id, name in enumerate(LABELS)},
        sha256=hashlib.sha256(to_jsonl(frame)).hexdigest(),
    )


def check_fingerprint(split: str, actual: SplitFingerprint, expected: SplitFingerprint) -> None:
    """Stop with a message naming every field that differs from the pinned fingerprint."""
    differences = [
        f"{field} {getattr(actual, field)} != pinned {getattr(expected, field)}"
        for field in ("rows", "labels", "sha256")
        if getattr(actual, field) != getattr(expected, field)
    ]
    if differences:
        raise FinsentError(f"{split} split does not match params data.fingerprint: " + "; ".join(differences))


def split_dev(frame: pd.DataFrame, dev_size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Carve a stratified, seeded dev split out of train; both keep the source order."""
    train, dev = train_test_split(frame, test_size=dev_size, random_state=seed, stratify=frame["label"])
    return train.sort_values("id"), dev.sort_values("id")


def prepare_raw(params: DataParams, out_dir: Path) -> dict[str, int]:
    """Fetch, check and split the data set into `train`, `dev` and `validation` JSONL files."""
    sources = fetch_source_files(params.dataset, params.revision)
    frames = {split: read_source_csv(path) for split, path in sources.items()}
    for split, frame in frames.items():
        check_fingerprint(split, fingerprint(frame), params.fingerprint[split])
    train, dev = split_dev(frames["train"], params.dev_size, params.seed)
    splits = {"train": train, "dev": dev, "validation": frames["validation"]}
    for split, frame in splits.items():
        (out_dir / f"{split}.jsonl").write_bytes(to_jsonl(frame))
    return {split: len(frame) for split, frame in splits.items()}
