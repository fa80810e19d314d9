import json
import os
import shutil
import subprocess
import sys

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
        # The pipeline's rule (finsent.text.first_blank): a text with nothing but whitespace is refused.
        (None, b"ok\n \t\nfine\n", "error: stdin: line 2: empty or only whitespace\n"),
        ("in.csv", b'text\nok\n"  "\n', "error: {path}: row 2: empty or only whitespace\n"),
        ("in.jsonl", b'{"text": "ok"}\n{"text": ""}\n', "error: {path}: row 2: empty or only whitespace\n"),
    ],
    ids=[
        "empty-stdin",
        "stdin-not-utf8",
        "missing-column",
        "file-not-utf8",
        "empty-file",
        "not-a-string",
        "blank-stdin-line",
        "blank-csv-cell",
        "empty-jsonl-text",
    ],
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


def test_a_blank_argument_is_named(exported_project):
    code, stdout, stderr = predict(exported_project, "ok", "   ", check=False)
    assert (code, stdout, stderr) == (1, "", "error: argument 2: empty or only whitespace\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "-1"], "argument --batch-size: must be at least 1, not -1"),
        (["--batch-size", "0"], "argument --batch-size: must be at least 1, not 0"),
        (["--batch-size", "many"], "argument --batch-size: not a whole number: 'many'"),
        (["-o", "{folder}"], "argument -o/--output: {folder} is a folder; give a file to write"),
    ],
    ids=["batch-size-negative", "batch-size-zero", "batch-size-not-a-number", "output-a-folder"],
)
def test_a_bad_flag_is_a_usage_error(exported_project, tmp_path, args, message):
    args = [arg.format(folder=tmp_path) for arg in args]
    code, stdout, stderr = predict(exported_project, *args, "ok", check=False)
    assert (code, stdout) == (2, "")
    assert stderr.splitlines()[-1] == f"finsent-predict: error: {message.format(folder=tmp_path)}"
    assert "Traceback" not in stderr


def test_an_input_file_that_is_a_folder_is_one_line(exported_project, tmp_path):
    code, stdout, stderr = predict(exported_project, "-i", str(tmp_path), check=False)
    assert (code, stdout, stderr) == (1, "", f"error: {tmp_path}: cannot read it (Is a directory)\n")


def max_rss_kib(project, stdin_file) -> int:
    """Run finsent-predict on `stdin_file`; its peak resident memory (KiB), read from its own rusage."""
    with stdin_file.open("rb") as stdin:
        process = subprocess.Popen(
            [*finsent_command("serving.predict"), "-o", str(stdin_file.with_suffix(".out.jsonl"))],
            cwd=project,
            env={**os.environ, **SOURCE_ENV},
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    assert process.returncode == 0
    return usage.ru_maxrss


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_a_10_mb_line_is_classified_in_little_memory(exported_project, tmp_path):
    # The tokenize stage saves the tokenizer with model_max_length set to the model's input length;
    # the test fixture's tokenizer says 512 for a 128-position model, so it is set here as the stage does.
    shutil.copytree(exported_project / "exported", tmp_path / "exported")
    config_file = tmp_path / "exported" / "tokenizer_config.json"
    config_file.write_text(json.dumps(json.loads(config_file.read_text()) | {"model_max_length": 128}))
    (tmp_path / "short.txt").write_text("$AAPL up\n")
    (tmp_path / "long.txt").write_text("$AAPL up " * 1_100_000 + "\n")  # 9.9 MB, one line
    baseline = max_rss_kib(tmp_path, tmp_path / "short.txt")
    extra_mib = (max_rss_kib(tmp_path, tmp_path / "long.txt") - baseline) / 1024
    assert extra_mib < 200, f"{extra_mib:.0f} MiB more than for a short line"
    assert len((tmp_path / "long.out.jsonl").read_text().splitlines()) == 1
