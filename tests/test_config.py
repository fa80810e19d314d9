import re
from pathlib import Path

import pytest

from finsent.config import load_params
from finsent.errors import FinsentError

PROJECT = Path(__file__).resolve().parents[1]


def with_line(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of params.yaml with the first match of the regex `old` replaced by `new`."""
    text, count = re.subn(old, new, (PROJECT / "params.yaml").read_text(), count=1)
    assert count == 1
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_committed_params_are_valid():
    params = load_params(PROJECT / "params.yaml")
    assert params.model.checkpoint == "sentence-transformers/all-mpnet-base-v2"
    assert params.data.fingerprint["train"].rows == 9543


def test_exponent_without_dot_is_a_float(tmp_path):
    # `dvc exp run -S train.learning_rate=1e-3` writes exactly this; YAML 1.1 readers see a string.
    path = with_line(tmp_path, r"learning_rate: [\d.e-]+", "learning_rate: 1e-3")
    learning_rate = load_params(path).train.learning_rate
    assert type(learning_rate) is float
    assert learning_rate == 0.001


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            r"learning_rate: [\d.e-]+",
            "learning_rate: -1",
            "train.learning_rate: Input should be greater than 0",
        ),
        (r"  epochs: \d+", "  epochs: three", "train.epochs: Input should be a valid integer"),
        (
            "  cpu_bf16: false\n",
            "  cpu_bf16: false\n  lr: 1\n",
            "train.lr: Extra inputs are not permitted",
        ),
        (
            r"learning_rate: [\d.e-]+",
            "learning_rate: .inf",
            "train.learning_rate: Input should be a finite number",
        ),
        (r"alpha: 0.5", "alpha: 1.5", "distill.alpha: Input should be less than or equal to 1"),
        (r"temperature: [\d.]+", "temperature: 0", "distill.temperature: Input should be greater than 0"),
        (r"temperature: [\d.]+", "temperature: -2", "distill.temperature: Input should be greater than 0"),
        (
            r"    num_processes: 1\n",
            "    num_processes: 2\n",
            "teacher.train: Value error, this stage trains in one process",
        ),
        (r"dev_size: [\d.]+", "dev_size: 1.5", "data.dev_size: Input should be less than 1"),
        (
            r"  num_processes: \d+",
            "  num_processes: 0",
            "train.num_processes: Input should be greater than 0",
        ),
        (
            r"  num_processes: \d+",
            "  num_processes: 3",
            "train.num_processes: Value error, train.batch_size 32 (the global batch) "
            "cannot be split evenly among 3 processes",
        ),
    ],
)
def test_bad_value_is_named(tmp_path, old, new, message):
    path = with_line(tmp_path, old, new)
    with pytest.raises(FinsentError) as error:
        load_params(path)
    assert str(error.value).startswith(f"{path}: {message}")


def test_missing_file(tmp_path):
    with pytest.raises(FinsentError, match=r"params\.yaml: file not found"):
        load_params(tmp_path / "params.yaml")


def test_params_that_are_not_utf8_are_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes((PROJECT / "params.yaml").read_bytes().replace(b"Every knob", b"Every kn\xf6b"))
    with pytest.raises(FinsentError, match=r"params\.yaml: not UTF-8 \(byte \d+\)"):
        load_params(path)


@pytest.mark.parametrize(
    ("old", "key"),
    [
        (r"  alpha: 0.5\n", "distill.alpha"),
        (r"  url_replacement: http\n", "tokenize.url_replacement"),
        (r"  cpu_bf16: false\n", "train.cpu_bf16"),
        (r"    num_processes: 1\n", "teacher.train.num_processes"),
        (r"\nevaluate:\n  batch_size: \d+\n", "evaluate"),
    ],
)
def test_a_key_missing_from_params_is_an_error_naming_it(tmp_path, old, key):
    # params.yaml is the one source of every default: no key falls back to a value in the code.
    path = with_line(tmp_path, old, "\n" if old.startswith("\\n") else "")
    with pytest.raises(FinsentError) as error:
        load_params(path)
    assert str(error.value) == f"{path}: {key}: missing"


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- a list\n", "just text\n"])
def test_params_that_are_not_a_mapping_of_sections_are_one_line(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(FinsentError) as error:
        load_params(path)
    assert str(error.value) == f"{path}: not a mapping of sections (data, model, tokenize, ...)"
