import json
import os
import subprocess

import numpy as np
import pandas as pd
import pytest
from conftest import SOURCE_ENV, finsent_command

from finsent.config import LABELS
from finsent.predictors import ONNX_FILES, OnnxPredictor, TorchPredictor

TEXTS = [
    "$AAPL beats estimates, shares up 5%",
    "Fed holds rates",
    "$TSLA deliveries miss; stock falls 8% premarket",
]


def predict(project, *args, stdin: str | bytes | None = None, check: bool = True):
    """Run finsent-predict in `project`; return its exit status, stdout and stderr."""
    result = subprocess.run(
        [*finsent_command("serving.predict"), *args],
        cwd=project,
        env={**os.environ, **SOURCE_ENV},
        input=stdin.encode() if isinstance(stdin, str) else (stdin or b""),
        capture_output=True,
    )
    if check:
        assert result.returncode == 0, result.stderr.decode()
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def probabilities_of(jsonl: str) -> np.ndarray:
    rows = [json.loads(line) for line in jsonl.splitlines()]
    for row in rows:
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
        assert list(row["probabilities"]) == list(LABELS)
    return np.array([list(row["probabilities"].values()) for row in rows])


def test_texts_as_arguments_or_stdin_lines_give_the_int8_models_probabilities_in_order(exported_project):
    expected = OnnxPredictor(exported_project / "exported" / ONNX_FILES["onnx_int8"], 32).predict_proba(TEXTS)
    _, from_arguments, _ = predict(exported_project, *TEXTS)
    np.testing.assert_allclose(probabilities_of(from_arguments), expected, atol=1e-6)
    _, from_stdin, stderr = predict(exported_project, stdin="\n".join(reversed(TEXTS)) + "\n")
    np.testing.assert_allclose(probabilities_of(from_stdin), expected[::-1], atol=1e-6)
    assert stderr == ""  # no progress bar for stdin


def test_csv_file_with_a_named_column_to_csv_output_with_pytorch(exported_project, tmp_path):
    texts = pd.read_json(exported_project / "data/raw/validation.jsonl", lines=True)["text"].tolist()
    texts = (texts * 3)[:600]  # more rows than the progress bar's threshold
    pd.DataFrame({"id": range(600), "tweet": texts}).to_csv(tmp_path / "in.csv", index=False)
    _, stdout, stderr = predict(
        exported_project,
        "-i",
        str(tmp_path / "in.csv"),
        "-c",
        "tweet",
        "-o",
        str(tmp_path / "out.csv"),
        "-b",
        "pytorch",
    )
    assert stdout == ""
    assert "600/600" in stderr  # the progress bar
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["label", "p_Bearish", "p_Bullish", "p_Neutral"]
    expected = TorchPredictor.from_dir(exported_project / "models", 32).predict_proba(texts)
    # The command hands the model 512 texts at a time: other batches, other padding, last digits differ.
    np.testing.assert_allclose(out.iloc[:, 1:].to_numpy(), expected, atol=1e-5)
    assert out["label"].tolist() == [LABELS[i] for i in expected.argmax(axis=1)]


def test_jsonl_file(exported_project, tmp_path):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS))
    _, stdout, _ = predict(
        exported_project, "--input-file", str(tmp_path / "in.jsonl"), "--backend", "onnx_fp32"
    )
    expected = OnnxPredictor(exported_project / "exported" / ONNX_FILES["onnx_fp32"], 32).predict_proba(TEXTS)
    np.testing.assert_allclose(probabilities_of(stdout), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("file_name", "content", "message"),
    [
        (None, b"", "error: stdin: no texts to classify\n"),
        (None, b"caf\xe9\n", "error: stdin: not UTF-8 (byte 3)\n"),
        ("in.csv", b"id,tweet\n1,hello\n", "error: {path}: missing column 'text' (columns: id, tweet)\n"),
        ("in.csv", b"text\ncaf\xe9\n", "error: {path}: not UTF-8 (byte 8)\n"),
        ("in.csv", b"", "error: {path}: empty file, nothing to classify\n"),
        (
            "in.jsonl",
            b'{"text": "ok"}\n{"text": 3}\n',
            "error: {path}: row 2: column 'text' is not a string\n",
        ),
    ],
    ids=["empty-stdin", "stdin-not-utf8", "missing-column", "file-not-utf8", "empty-file", "not-a-string"],
)
def test_bad_input_is_one_line_and_leaves_the_output_file_alone(
    exported_project, tmp_path, file_name, content, message
):
    (tmp_path / "out.jsonl").write_text("the previous results\n")
    args = ["-o", str(tmp_path / "out.jsonl")]
    if file_name:
        (tmp_path / file_name).write_bytes(content)
        args += ["-i", str(tmp_path / file_name)]
    code, stdout, stderr = predict(exported_project, *args, stdin=None if file_name else content, check=False)
    assert (code, stdout) == (1, "")
    assert stderr == message.format(path=tmp_path / (file_name or ""))
    assert (tmp_path / "out.jsonl").read_text() == "the previous results\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted({"out.jsonl", file_name or "out.jsonl"})
