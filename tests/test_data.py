import csv
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import PROJECT, TEST_DATA, edit_params, run, slice_mirror, stage_here, stage_script

from finsent.config import LABELS, load_params
from finsent.data import MIRROR_ENV, SOURCE_FILES, prepare_raw, read_jsonl, read_source_csv, to_jsonl


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory, monkeypatch_module, whole_data_set) -> Path:
    monkeypatch_module.setenv(MIRROR_ENV, str(whole_data_set))
    out = tmp_path_factory.mktemp("raw")
    prepare_raw(load_params(PROJECT / "params.yaml").data, out)
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_real_mirror_matches_the_pinned_fingerprint_and_splits(raw_dir):
    train, dev, validation = (read_jsonl(raw_dir / f"{s}.jsonl") for s in ("train", "dev", "validation"))
    assert (len(train), len(dev), len(validation)) == (8588, 955, 2388)
    assert set(train["id"]).isdisjoint(dev["id"])
    assert sorted([*train["id"], *dev["id"]]) == list(range(9543))
    # Stratified: each class has the same share in dev as in the whole train file (to one row).
    whole = pd.concat([train, dev])["label"].value_counts()
    for label_id in range(len(LABELS)):
        assert abs((dev["label"] == label_id).sum() - whole[label_id] * 955 / 9543) <= 1


def test_split_is_reproducible(raw_dir, tmp_path, monkeypatch, whole_data_set):
    monkeypatch.setenv(MIRROR_ENV, str(whole_data_set))
    prepare_raw(load_params(PROJECT / "params.yaml").data, tmp_path)
    for split in ("train", "dev", "validation"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (raw_dir / f"{split}.jsonl").read_bytes()


def test_canonical_bytes_do_not_depend_on_csv_formatting(tmp_path):
    # Quoting every cell and CRLF line ends are the same table, so the same canonical bytes.
    source = TEST_DATA / SOURCE_FILES["validation"]
    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    reformatted = tmp_path / "reformatted.csv"
    frame.to_csv(reformatted, index=False, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    assert to_jsonl(read_source_csv(reformatted)) == to_jsonl(read_source_csv(source))


def damaged_mirror(folder: Path, damage: str) -> Path:
    slice_mirror(folder, {"train": 50, "validation": 20})
    train = folder / SOURCE_FILES["train"]
    if damage == "missing column":
        frame = pd.read_csv(train, dtype=str, keep_default_na=False).rename(columns={"label": "sentiment"})
        frame.to_csv(train, index=False)
    elif damage == "unknown label":
        train.write_text(train.read_text().replace(",0\n", ",7\n", 1))
    elif damage == "empty text":
        train.write_text(train.read_text().replace("\n", '\n"  ",1\n', 1))
    elif damage == "row ending in a comma":  # pandas would read `text` as an index column
        train.write_text(train.read_text().replace("\n", '\n"$AAPL soars",1,\n', 1))
    elif damage == "short row":
        train.write_text(train.read_text().replace("\n", '\n"$AAPL soars"\n', 1))
    elif damage == "not utf-8":
        train.write_bytes(train.read_bytes() + "Café stocks,2\n".encode("latin-1"))
    return folder


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing column", "sent_train.csv: missing column 'label'"),
        (
            "unknown label",
            "sent_train.csv: line 2, column 'label': unknown label '7' (expected one of 0, 1, 2)",
        ),
        ("empty text", "sent_train.csv: line 2, column 'text': empty or only whitespace"),
        ("row ending in a comma", "sent_train.csv: line 2: field count 3, the header's 2"),
        ("short row", "sent_train.csv: line 2: field count 1, the header's 2"),
        ("not utf-8", "sent_train.csv: not UTF-8 (byte"),
        ("fingerprint", "train split does not match params data.fingerprint: rows 50 != pinned 9543;"),
        ("no mirror", f"{MIRROR_ENV}="),
        ("no file", "sent_valid.csv: file not found in the mirror folder"),
        ("a folder", "sent_valid.csv: a folder, not a file, in the mirror folder"),
    ],
)
def test_bad_input_stops_the_stage_with_one_line(tmp_path, monkeypatch, damage, message):
    mirror = damaged_mirror(tmp_path / "mirror", damage)
    if damage == "no mirror":
        shutil.rmtree(mirror)
    if damage in ("no file", "a folder"):
        (mirror / SOURCE_FILES["validation"]).unlink()
    if damage == "a folder":
        (mirror / SOURCE_FILES["validation"]).mkdir()
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(PROJECT / "params.yaml", work)
    # An output from an earlier, good run: a failed run must leave it as it was.
    (work / "raw").mkdir()
    (work / "raw" / "train.jsonl").write_text("earlier output\n")

    # The stage's own code in this process (`stage_here`); it runs as a real process in the next test.
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    result = stage_here("download.py", "raw", cwd=work)

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert sorted(p.name for p in work.iterdir()) == ["params.yaml", "raw"]
    assert (work / "raw" / "train.jsonl").read_text() == "earlier output\n"


def test_without_mirror_an_unreachable_hub_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    shutil.copy(PROJECT / "params.yaml", tmp_path)
    edit_params(tmp_path, data__revision="0123456789abcdef0123456789abcdef01234567")
    env = {"HF_HOME": str(tmp_path / "hf-home")}  # an empty cache: nothing to fall back on
    result = run([*stage_script("download.py"), "raw"], cwd=tmp_path, env=env, check=False)
    assert result.returncode == 1
    revision = "0123456789abcdef0123456789abcdef01234567"
    assert result.stderr.startswith(
        f"error: cannot fetch zeroshot/twitter-financial-news-sentiment@{revision}"
    )
    assert result.stderr.rstrip().endswith(
        f"set {MIRROR_ENV} to a folder holding sent_train.csv and sent_valid.csv"
    )
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "raw").exists()
