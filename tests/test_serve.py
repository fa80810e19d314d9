import json
import os
import socket
import subprocess
import time

import httpx
import numpy as np
import pytest
from conftest import SOURCE_ENV, finsent_command

from finsent.predictors import ONNX_FILES, OnnxPredictor
from finsent.serving.model_version import model_version

TEXTS = ["$AAPL beats estimates, shares up 5%", "Fed holds rates", "$TSLA deliveries miss"]
MD5 = "0123456789abcdef0123456789abcdef"


def lock_entry(folder, md5: str = MD5) -> str:
    """dvc.lock as DVC writes it for an output folder: its md5, total size and file count."""
    files = [path for path in folder.rglob("*") if path.is_file()]
    size = sum(path.stat().st_size for path in files)
    return (
        f"schema: '2.0'\nstages:\n  export:\n    outs:\n    - path: {folder.name}\n      hash: md5\n"
        f"      md5: {md5}.dir\n      size: {size}\n      nfiles: {len(files)}\n"
    )


def test_model_version_is_the_locked_md5_while_the_folder_matches(exported_project, tmp_path):
    exported = exported_project / "exported"
    (tmp_path / "dvc.lock").write_text(lock_entry(exported))
    assert model_version(exported, tmp_path / "dvc.lock") is None  # not the folder that dvc.lock names
    (exported_project / "dvc.lock").write_text(lock_entry(exported).replace("size: ", "size: 1"))
    assert model_version(exported, exported_project / "dvc.lock") is None  # other files than those locked
    (exported_project / "dvc.lock").write_text(lock_entry(exported))
    assert model_version(exported, exported_project / "dvc.lock") == MD5


@pytest.fixture(scope="module")
def server(exported_project):
    """The real server, started as its documented command, on a free loopback port."""
    (exported_project / "dvc.lock").write_text(lock_entry(exported_project / "exported"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [*finsent_command("serving.server"), "--port", str(port)],
        cwd=exported_project,
        env={**os.environ, **SOURCE_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        for _ in range(300):
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.1)
        yield client
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)


def test_health_and_readiness(server):
    assert server.get("/healthz").json() == {"status": "ok"}
    assert server.get("/readyz").json() == {"status": "ready", "backend": "onnx_int8", "model_version": MD5}


def test_predict_gives_one_result_per_text_in_order(server, exported_project):
    response = server.post("/v1/predict", json={"texts": TEXTS})
    assert response.status_code == 200
    body = response.json()
    assert (body["backend"], body["model_version"]) == ("onnx_int8", MD5)
    expected = OnnxPredictor(exported_project / "exported" / ONNX_FILES["onnx_int8"], 32).predict_proba(TEXTS)
    got = np.array([list(p["probabilities"].values()) for p in body["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert [p["label"] for p in body["predictions"]] == [
        ["Bearish", "Bullish", "Neutral"][i] for i in expected.argmax(axis=1)
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"texts": ["unclosed', "JSON decode error"),
        (b'["a bare list"]', "Input should be a valid dictionary or object to extract fields from"),
        (b'{"texts": "one text"}', "Input should be a valid list"),
        (b'{"texts": ["ok", 3]}', "Input should be a valid string"),
        (b'{"texts": []}', "List should have at least 1 item after validation, not 0"),
        (
            json.dumps({"texts": ["a"] * 5}).encode(),
            "List should have at most 4 items after validation, not 5",
        ),
        (json.dumps({"texts": ["x" * 51]}).encode(), "String should have at most 50 characters"),
        (b'{"text": ["misnamed"]}', "Field required"),
    ],
    ids=[
        "not-json",
        "not-an-object",
        "not-a-list",
        "not-a-string",
        "empty",
        "too-many",
        "too-long",
        "no-texts",
    ],
)
def test_bad_input_is_a_422_and_the_server_keeps_serving(server, content, message):
    response = server.post("/v1/predict", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert message in [error["msg"] for error in response.json()["detail"]]
    assert server.post("/v1/predict", json={"texts": ["still up"]}).status_code == 200


def test_openapi_schema_states_the_limits(server):
    schema = server.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/healthz", "/readyz", "/v1/predict"}
    texts = schema["components"]["schemas"]["PredictRequest"]["properties"]["texts"]
    assert (texts["minItems"], texts["maxItems"], texts["items"]["maxLength"]) == (1, 4, 50)


def test_model_threads_reach_the_runtime(exported_project):
    model_file = exported_project / "exported" / ONNX_FILES["onnx_int8"]
    assert OnnxPredictor(model_file, 32, threads=1).session.get_session_options().intra_op_num_threads == 1
    assert OnnxPredictor(model_file, 32).session.get_session_options().intra_op_num_threads == 0  # all cores


def test_negative_model_threads_stop_the_server_before_it_starts(exported_project):
    result = subprocess.run(
        [*finsent_command("serving.server"), "--model-threads", "-1"],
        cwd=exported_project,
        env={**os.environ, **SOURCE_ENV},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "error: serve setting model_threads (flag, FINSENT_SERVE_MODEL_THREADS or params.yaml "
        "serve.model_threads): Input should be greater than or equal to 0\n"
    )
    assert "Traceback" not in result.stderr
