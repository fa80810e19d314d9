"""The deployables of a serving install (`pip install '.[serve]'`) run the ONNX models without the
training stack: after the predict command and the server have answered, none of its modules was
imported (`python -X importtime` lists every module a process imports)."""

import os
import signal
import subprocess
import time

import httpx
from conftest import SOURCE_ENV, finsent_command
from support.server import free_port

TRAINING_STACK = {
    "torch",
    "transformers",
    "peft",
    "datasets",
    "dvc",
    "dvclive",
    "pandas",
    "sklearn",
    "scipy",
    "ray",
    "pyarrow",
    "onnxruntime",  # the training stack's runtime: a serving install runs OpenVINO alone
}


def imported_top_level(stderr: str) -> set[str]:
    """The top-level packages in `python -X importtime`'s lines on stderr."""
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line and "imported package" not in line
    }


def importtime(command: list[str]) -> list[str]:
    return [command[0], "-X", "importtime", *command[1:]]


def test_the_predict_command_imports_no_training_module(exported_project):
    result = subprocess.run(
        [*importtime(finsent_command("inference.predict")), "Fed holds rates", "$AAPL beats estimates"],
        cwd=exported_project,
        env={**os.environ, **SOURCE_ENV},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.splitlines()) == 2
    imported = imported_top_level(result.stderr)
    assert {"openvino", "tokenizers", "numpy"} <= imported
    assert imported & TRAINING_STACK == set()


def test_the_server_imports_no_training_module_after_answering(exported_project, tmp_path):
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("w") as stderr:
        server = subprocess.Popen(
            [*importtime(finsent_command("inference.api.server")), "--port", str(port)],
            cwd=exported_project,
            env={**os.environ, **SOURCE_ENV},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for _ in range(300):
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            answer = client.post("/v1/predict", json={"texts": ["Fed holds rates"]})
            assert answer.status_code == 200, answer.text
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    imported = imported_top_level(log.read_text())
    assert {"openvino", "tokenizers", "fastapi", "uvicorn"} <= imported
    assert imported & TRAINING_STACK == set()
