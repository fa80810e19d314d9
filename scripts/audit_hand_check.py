"""The audit's hand check: train rows it flags and rows it does not, shuffled together and read blind.

    PYTHONPATH=src:. python scripts/audit_hand_check.py sample   # data/hand_check/judgments.csv, blind
    # read each tweet; fill `label_wrong` (yes or no: is its given label wrong?) and `why`
    PYTHONPATH=src:. python scripts/audit_hand_check.py score    # data/hand_check/result.json

`sample` draws `--per-group` rows (50) of each group with `--seed` (0) and writes them shuffled, with
their id, text and given label, and nothing that says which group a row is in. `score` joins the
judgments with the audit's flags (data/audit/train.csv) and writes each group's share of wrong labels:
the audit's precision (flagged rows whose label is wrong) against the same share among the unflagged.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from finsent.atomic import atomic_file
from finsent.audit_files import read_doubtful
from finsent.cli import run_cli
from finsent.config import LABELS
from finsent.data import read_jsonl
from finsent.errors import FinsentError

TRAIN = Path("data/raw/train.jsonl")
FLAGS = Path("data/audit/train.csv")
JUDGMENTS = Path("data/hand_check/judgments.csv")
RESULT = Path("data/hand_check/result.json")
ANSWERS = ("yes", "no")


def sample(per_group: int, seed: int) -> pd.DataFrame:
    """`per_group` flagged and `per_group` unflagged train rows, shuffled, without their group."""
    train = read_jsonl(TRAIN)
    flagged = train["id"].isin(read_doubtful(FLAGS)["id"]).to_numpy()
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(group), per_group, replace=False) for group in (flagged, ~flagged)]
    rows = train.iloc[rng.permutation(np.concatenate(chosen))]
    return pd.DataFrame(
        {
            "id": rows["id"],
            "text": rows["text"],
            "label": np.array(LABELS)[rows["label"]],
            "label_wrong": "",
            "why": "",
        }
    )


def score(judgments: pd.DataFrame) -> dict:
    """Each group's rows and share whose given label the judge found wrong, and the ratio of the two."""
    unanswered = ~judgments["label_wrong"].isin(ANSWERS)
    if unanswered.any():
        row = judgments[unanswered].iloc[0]
        raise FinsentError(
            f"{JUDGMENTS}: id {row['id']}: label_wrong {row['label_wrong']!r} is not yes or no"
        )
    flagged = judgments["id"].isin(read_doubtful(FLAGS)["id"])
    wrong = judgments["label_wrong"] == "yes"
    groups = {
        name: {"rows": int(members.sum()), "label_wrong": int((wrong & members).sum())}
        for name, members in (("flagged", flagged), ("unflagged", ~flagged))
    }
    for group in groups.values():
        group["share_wrong"] = round(group["label_wrong"] / group["rows"], 4)
    unflagged = groups["unflagged"]["share_wrong"]
    ratio = None if unflagged == 0 else round(groups["flagged"]["share_wrong"] / unflagged, 2)
    return groups | {"ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("command", choices=("sample", "score"))
    parser.add_argument("--per-group", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.command == "sample":
        if JUDGMENTS.exists():
            raise FinsentError(f"{JUDGMENTS}: exists, and may hold judgments: move it away to draw anew")
        with atomic_file(JUDGMENTS) as staging:
            sample(args.per_group, args.seed).to_csv(staging, index=False)
        print(JUDGMENTS)
        return
    judgments = pd.read_csv(JUDGMENTS, dtype=str, keep_default_na=False).astype({"id": int})
    result = score(judgments)
    with atomic_file(RESULT) as staging:
        staging.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result))


if __name__ == "__main__":
    run_cli(main)
