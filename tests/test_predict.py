import csv
import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SOURCE_ENV, finsent_command, run_here, served_predictor

from finsent.config import LABELS
from finsent.inference.predict import cli
from finsent.inference.predictors import TorchPredictor

TEXTS = [
    "$AAPL beats estimates, shares up 5%",
    "Fed holds rates",
    "$TSLA deliveries miss; stock falls 8% premarket",
]


def predict(project, *args, stdin: str | bytes | Path | None = None, check: bool = True):
    """Run finsent-predict in `project` (`stdin`: its input, or a file to read as stdin); return its exit
    status, stdout and stderr."""
    stdin = stdin.encode() if isinstance(stdin, str) else stdin
    with stdin.open("rb") if isinstance(stdin, Path) else nullcontext() as file:
        result = subprocess.run(
            [*finsent_command("inference.predict"), *args],
            cwd=project,
            env={**os.environ, **SOURCE_ENV},
            stdin=file,
            input=None if file else stdin or b"",
            capture_output=True,
        )
    if check:
        assert result.returncode == 0, result.stderr.decode()
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def predict_here(project, *args: str | bytes, stdin: bytes = b""):
    """finsent-predict's console entry point run in this process (`run_here`), for the runs that must
    fail: its exit status, stdout and stderr. An argument given as bytes arrives as Python decodes a
    command line (lone surrogates for what is not UTF-8)."""
    result = run_here(cli, ["finsent-predict", *map(os.fsdecode, args)], project, stdin)
    return result.returncode, result.stdout, result.stderr


def probabilities_of(jsonl: str) -> np.ndarray:
    rows = [json.loads(line) for line in jsonl.splitlines()]
    for row in rows:
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
        assert list(row["probabilities"]) == list(LABELS)
        # Decimals that mean something: not float32's widened to a Python float (0.8999999761581421).
        assert all(value == round(value, 6) for value in row["probabilities"].values())
    return np.array([list(row["probabilities"].values()) for row in rows])


def test_texts_as_arguments_or_stdin_lines_give_the_int8_models_probabilities_in_order(exported_project):
    expected = served_predictor(exported_project / "exported", "onnx_int8", 32).predict_proba(TEXTS)
    _, from_arguments, _ = predict(exported_project, *TEXTS)
    np.testing.assert_allclose(probabilities_of(from_arguments), expected, atol=1e-6)
    _, from_stdin, stderr = predict(exported_project, stdin="\n".join(reversed(TEXTS)) + "\n")
    np.testing.assert_allclose(probabilities_of(from_stdin), expected[::-1], atol=1e-6)
    assert stderr == ""  # no progress bar for stdin


LINE_BREAKS_THAT_ARE_TEXT = ["\u2028", "\u2029", "\x85", "\x0c", "\x0b", "\x1c", "\x1d", "\x1e", "\r"]
"""What str.splitlines() also ends a line at; on stdin only \\n and \\r\\n end one."""


def test_one_result_per_stdin_line_whatever_unicode_it_holds(exported_project):
    texts = [f"$AAPL up{char}shares rise {i}" for i, char in enumerate(LINE_BREAKS_THAT_ARE_TEXT)]
    texts.append("".join(LINE_BREAKS_THAT_ARE_TEXT).join(["$TSLA", "falls"]))
    stdin = "".join(text + ("\r\n" if i % 2 else "\n") for i, text in enumerate(texts))
    _, stdout, _ = predict(exported_project, stdin=stdin)
    expected = served_predictor(exported_project / "exported", "onnx_int8", 32).predict_proba(texts)
    np.testing.assert_allclose(probabilities_of(stdout), expected, atol=1e-6)


def test_a_csv_file_as_spreadsheets_write_it_gives_one_result_per_row(exported_project, tmp_path):
    # A byte order mark, CRLF ends, a blank line, a quoted text over two lines, a text longer than the
    # csv module's default field limit (131,072 characters), and cells that pandas would read as missing.
    texts = ["$AAPL beats", "line one\r\nline two, still one text", "$AAPL up " * 20_000, "NA", "null"]
    rows = [["id", "text"], *([str(i), text] for i, text in enumerate(texts))]
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerows([*rows[:2], [], *rows[2:]])
    (tmp_path / "in.csv").write_bytes(b"\xef\xbb\xbf" + out.getvalue().encode())
    _, stdout, _ = predict(exported_project, "-i", str(tmp_path / "in.csv"))
    expected = served_predictor(exported_project / "exported", "onnx_int8", 32).predict_proba(texts)
    np.testing.assert_allclose(probabilities_of(stdout), expected, atol=1e-6)


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


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_jsonl_and_parquet_files(exported_project, tmp_path, suffix):
    frame = pd.DataFrame({"text": TEXTS})
    if suffix == ".jsonl":
        frame.to_json(tmp_path / "in.jsonl", orient="records", lines=True)
    else:
        frame.to_parquet(tmp_path / "in.parquet")
    _, stdout, _ = predict(
        exported_project, "--input-file", str(tmp_path / f"in{suffix}"), "--backend", "onnx_fp32"
    )
    expected = served_predictor(exported_project / "exported", "onnx_fp32", 32).predict_proba(TEXTS)
    np.testing.assert_allclose(probabilities_of(stdout), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("file_name", "content", "message"),
    [
        (None, b"ok\n \t\nfine\n", "error: stdin: line 2: empty or only whitespace\n"),
        ("in.csv", b'text\nok\n"  "\n', "error: {path}: line 3, column 'text': empty or only whitespace\n"),
    ],
    ids=["stdin", "file"],
)
def test_bad_input_is_one_line_and_leaves_the_output_file_alone(
    exported_project, tmp_path, file_name, content, message
):
    """Every bad input, once for both commands: tests/test_texts.py. Here: the output stays as it was."""
    (tmp_path / "out.jsonl").write_text("the previous results\n")
    args = ["-o", str(tmp_path / "out.jsonl")]
    if file_name:
        (tmp_path / file_name).write_bytes(content)
        args += ["-i", str(tmp_path / file_name)]
    stdin = b"" if file_name else content
    code, stdout, stderr = predict_here(exported_project, *args, stdin=stdin)
    assert (code, stdout) == (1, "")
    assert stderr == message.format(path=tmp_path / (file_name or ""))
    assert (tmp_path / "out.jsonl").read_text() == "the previous results\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted({"out.jsonl", file_name or "out.jsonl"})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ok", "   "], "error: argument 2: empty or only whitespace\n"),
        # Python decodes arguments with surrogateescape: a byte that is not UTF-8 becomes a lone surrogate.
        ([b"caf\xe9 up"], "error: argument 1: a lone surrogate, not UTF-8 text\n"),
    ],
    ids=["blank", "not-utf8"],
)
def test_a_bad_argument_is_named(exported_project, args, message):
    code, stdout, stderr = predict_here(exported_project, *args)
    assert (code, stdout, stderr) == (1, "", message)


def test_a_closed_stdin_is_one_line(exported_project):
    command = ["bash", "-c", 'exec "$@" <&-', "bash", *finsent_command("inference.predict")]
    result = subprocess.run(
        command, cwd=exported_project, env={**os.environ, **SOURCE_ENV}, capture_output=True
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        b"",
        b"error: stdin: closed, no texts to classify\n",
    )


@pytest.mark.parametrize("link", ["same-path", "symlink", "hard-link", "stdin"])
def test_the_output_is_never_the_input_file(exported_project, tmp_path, link):
    (tmp_path / "in.csv").write_text("text\n$AAPL up\n")
    output = tmp_path / ("in.csv" if link in ("same-path", "stdin") else "out.csv")
    if link == "symlink":
        output.symlink_to(tmp_path / "in.csv")
    elif link == "hard-link":
        output.hardlink_to(tmp_path / "in.csv")
    if link == "stdin":  # finsent-predict -o in.csv < in.csv
        code, stdout, stderr = predict(exported_project, "-o", str(output), stdin=output, check=False)
    else:
        code, stdout, stderr = predict(
            exported_project, "-i", str(tmp_path / "in.csv"), "-o", str(output), check=False
        )
    assert (code, stdout) == (2, "")
    message = f"argument -o/--output: {output} is the input file; give another file to write"
    assert stderr.splitlines()[-1] == f"finsent-predict: error: {message}"
    assert (tmp_path / "in.csv").read_text() == "text\n$AAPL up\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "-1"], "argument --batch-size: must be at least 1, not -1"),
        (["--batch-size", "0"], "argument --batch-size: must be at least 1, not 0"),
        (["--batch-size", "many"], "argument --batch-size: not a whole number: 'many'"),
        (["-o", "{folder}"], "argument -o/--output: {folder} is a folder; give a file to write"),
        (
            ["-o", "{folder}/in.csv/out.jsonl"],
            "argument -o/--output: {folder}/in.csv is a file, not a folder to write out.jsonl in",
        ),
        (
            ["-o", "{folder}/in.csv/more/out.jsonl"],
            "argument -o/--output: {folder}/in.csv is a file, not a folder to write out.jsonl in",
        ),
    ],
    ids=[
        "batch-size-negative",
        "batch-size-zero",
        "batch-size-not-a-number",
        "output-a-folder",
        "output-in-a-file",
        "output-below-a-file",
    ],
)
def test_a_bad_flag_is_a_usage_error(exported_project, tmp_path, args, message):
    (tmp_path / "in.csv").write_text("text\nok\n")
    args = [arg.format(folder=tmp_path) for arg in args]
    code, stdout, stderr = predict_here(exported_project, *args, "ok")
    assert (code, stdout) == (2, "")
    assert stderr.splitlines()[-1] == f"finsent-predict: error: {message.format(folder=tmp_path)}"
    assert "Traceback" not in stderr


def test_an_input_file_that_is_a_folder_is_one_line(exported_project, tmp_path):
    (tmp_path / "in.csv").mkdir()
    code, stdout, stderr = predict_here(exported_project, "-i", str(tmp_path / "in.csv"))
    assert (code, stdout, stderr) == (1, "", f"error: {tmp_path / 'in.csv'}: a folder, not a file\n")
    assert (tmp_path / "in.csv").is_dir()


def max_rss_kib(project, stdin_file) -> int:
    """Run finsent-predict on `stdin_file`; its peak resident memory (KiB), read from its own rusage."""
    with stdin_file.open("rb") as stdin:
        process = subprocess.Popen(
            [*finsent_command("inference.predict"), "-o", str(stdin_file.with_suffix(".out.jsonl"))],
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


def test_help_needs_no_settings_and_a_bad_inference_section_is_one_line_when_predicting(tmp_path):
    # A bad inference section concerns the run, not `--help`; the server's section is not read.
    (tmp_path / "params.yaml").write_text("inference:\n  batch_size: lots\nserve:\n  max_texts: lots\n")
    status, stdout, _ = predict(tmp_path, "--help")
    assert status == 0
    assert "usage: finsent-predict" in stdout
    status, _, stderr = predict(tmp_path, "Fed holds rates", check=False)
    assert status == 1
    assert stderr == (
        "error: setting batch_size (flag, FINSENT_BATCH_SIZE or params.yaml inference.batch_size): "
        "Input should be a valid integer, unable to parse string as an integer\n"
    )
