"""The API alone (`front: none`, as a local `finsent-serve` runs): what it answers and logs, batching,
shutdown, the schema. With nginx in front: tests/test_front.py and tests/test_hostile_clients.py."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import pytest
from conftest import PROJECT, SOURCE_ENV, finsent_command, served_predictor
from ruamel.yaml import YAML
from support.api import access_log, image_copy, metric, schemathesis_run, served, wait_for_waiting_texts
from support.server import free_port

from finsent.inference.api.schemas import NOT_ONLY_WHITESPACE
from finsent.inference.api.settings import ServeSettings
from finsent.inference.model_version import model_version
from finsent.inference.predictors import OnnxPredictor, onnx_file
from finsent.inference.settings import PredictorSettings

TEXTS = ["$AAPL beats estimates, shares up 5%", "Fed holds rates", "$TSLA deliveries miss"]
MAX_BODY_BYTES = 4 * (12 * 50 + 8) + 1024
DOCKERFILE = PROJECT / "docker" / "serve.Dockerfile"


@pytest.fixture(scope="module")
def image_folder(exported_project, tmp_path_factory) -> Path:
    return image_copy(exported_project, tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="module")
def alone(image_folder, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with served("none", image_folder, log) as (client, _):
        yield client, log


@pytest.fixture(scope="module")
def server(alone) -> httpx.Client:
    return alone[0]


def test_model_version_is_a_hash_of_the_files_read(exported_project, tmp_path):
    version = model_version(exported_project / "exported")
    assert len(version) == 16 and int(version, 16) >= 0
    shutil.copytree(exported_project / "exported", tmp_path / "copy")
    assert model_version(tmp_path / "copy") == version  # the bytes, not where they are
    with (tmp_path / "copy" / "tokenizer.json").open("ab") as file:
        file.write(b" ")
    changed = model_version(tmp_path / "copy")
    assert changed != version
    (tmp_path / "copy" / "tokenizer.json").rename(tmp_path / "copy" / "renamed.json")
    assert model_version(tmp_path / "copy") not in {version, changed}
    # A predictor's version: its runtime and file, and the hash of the files it reads alone.
    shutil.copytree(exported_project / "exported", tmp_path / "again")
    predictor = served_predictor(tmp_path / "again", "onnx_int8", 32)
    assert predictor.version.startswith(f"{predictor.runtime}/model_int8-")
    (tmp_path / "again" / "model.onnx").unlink()  # the fp32 model: not read by the int8 predictor
    assert served_predictor(tmp_path / "again", "onnx_int8", 32).version == predictor.version


def test_health_and_readiness_without_params_or_dvc_lock(server, image_folder):
    assert sorted(path.name for path in image_folder.iterdir()) == ["exported"]
    assert server.get("/healthz").json() == {"status": "ok"}
    assert server.get("/readyz").json() == {
        "status": "ready",
        "backend": "onnx_int8",
        "model_version": served_predictor(image_folder / "exported", "onnx_int8", 32).version,
    }


def test_predict_gives_one_result_per_text_in_order(server, image_folder):
    response = server.post("/v1/predict", json={"texts": TEXTS})
    assert response.status_code == 200
    body = response.json()
    predictor = served_predictor(image_folder / "exported", "onnx_int8", 32)
    assert (body["backend"], body["model_version"]) == ("onnx_int8", predictor.version)
    expected = predictor.predict_proba(TEXTS)
    got = np.array([list(p["probabilities"].values()) for p in body["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert all(value == round(value, 6) for value in got.flat)  # not float32's digits widened
    assert [p["label"] for p in body["predictions"]] == [
        ["Bearish", "Bullish", "Neutral"][i] for i in expected.argmax(axis=1)
    ]


@pytest.mark.parametrize(
    ("content", "loc", "message"),
    [
        (b'{"texts": ["unclosed', ["body", 11], "JSON decode error"),
        (b'["a bare list"]', ["body"], "Input should be a valid dictionary or object to extract fields from"),
        (b'{"texts": "one text"}', ["body", "texts"], "Input should be a valid list"),
        (b'{"texts": ["ok", 3]}', ["body", "texts", 1], "Input should be a valid string"),
        (b'{"texts": []}', ["body", "texts"], "List should have at least 1 item after validation, not 0"),
        (
            json.dumps({"texts": ["a"] * 5}).encode(),
            ["body", "texts"],
            "List should have at most 4 items after validation, not 5",
        ),
        (
            json.dumps({"texts": ["x" * 51]}).encode(),
            ["body", "texts", 0],
            "String should have at most 50 characters",
        ),
        (b'{"text": ["misnamed"]}', ["body", "texts"], "Field required"),
        # FastAPI's own answer echoed these inputs and could not write them as JSON: a 500.
        (b'{"texts": NaN}', ["body", "texts"], "Input should be a valid list"),
        (b'{"texts": Infinity}', ["body", "texts"], "Input should be a valid list"),
        (b'{"texts": [-Infinity]}', ["body", "texts", 0], "Input should be a valid string"),
        (
            b'{"texts": ["ok", "\\ud800"]}',
            ["body", "texts", 1],
            "Input should be a valid string, unable to parse raw data as a unicode string",
        ),
        (
            b'{"texts": ["ok"], "\\udfff": 1}',
            ["body"],
            "Input should be a valid string, unable to parse raw data as a unicode string",
        ),
        # The pipeline's rule (finsent.text.first_blank): a text with nothing but whitespace is refused.
        (b'{"texts": ["ok", " \\t\\n"]}', ["body", "texts", 1], "Text is empty or only whitespace"),
        (b'{"texts": [""]}', ["body", "texts", 0], "Text is empty or only whitespace"),
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
        "nan",
        "infinity",
        "minus-infinity-in-list",
        "lone-surrogate",
        "lone-surrogate-key",
        "whitespace-only",
        "empty-text",
    ],
)
def test_bad_input_is_a_short_422_and_the_server_keeps_serving(server, content, loc, message):
    response = server.post("/v1/predict", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert {"loc": loc, "msg": message} in [{"loc": e["loc"], "msg": e["msg"]} for e in errors]
    assert all(set(error) == {"loc", "msg", "type"} for error in errors)  # no input, no context
    assert server.post("/v1/predict", json={"texts": ["still up"]}).status_code == 200


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", None, "application/jsonx"]
)
def test_a_body_not_declared_json_is_a_415_that_says_so(server, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = server.post("/v1/predict", content=b'{"texts": ["ok"]}', headers=headers)
    assert (response.status_code, response.json()) == (
        415,
        {"detail": "the body must be JSON, sent with Content-Type: application/json"},
    )
    assert len(response.headers["X-Request-ID"]) == 32


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/problem+json"])
def test_json_media_types_are_read_as_json(server, content_type):
    response = server.post(
        "/v1/predict", content=b'{"texts": ["ok"]}', headers={"content-type": content_type}
    )
    assert response.status_code == 200


def test_the_schemas_blank_rule_is_pythons_whitespace():
    whitespace = {chr(code) for code in range(sys.maxunicode + 1) if chr(code).isspace()}
    pattern = re.compile(NOT_ONLY_WHITESPACE)
    assert {chr(code) for code in range(sys.maxunicode + 1) if not pattern.search(chr(code))} == whitespace


BORDER_TEXTS = [
    "",
    " ",
    "\t\r\n",
    "\u2028",
    "\x1c",
    "\x85",
    "\u3000 ",
    "\ufeff",
    "\u200b",
    " a ",
    "x" * 50,
    "x" * 51,
]


def test_a_text_is_valid_by_the_schema_exactly_when_the_api_takes_it(server):
    schema = server.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"]
    validator = jsonschema.Draft202012Validator(schema)
    for text in BORDER_TEXTS:
        answer = server.post("/v1/predict", json={"texts": [text]})
        assert answer.status_code in (200, 422)
        assert validator.is_valid({"texts": [text]}) == (answer.status_code == 200), repr(text)


def test_a_422_never_echoes_the_input(server):
    # Just under the body limit: FastAPI's own answer was larger than the body.
    body = json.dumps({"texts": "x" * (MAX_BODY_BYTES - 100)}).encode()
    response = server.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert len(response.content) < 200 and b"xxx" not in response.content
    many = json.dumps({f"e{i}": 1 for i in range(10)}).encode()  # 11 errors: 10 extra fields, no texts
    response = server.post("/v1/predict", content=many, headers={"content-type": "application/json"})
    assert response.status_code == 422 and len(response.json()["detail"]) == 10


def test_a_body_over_the_limit_is_a_413_without_being_read_whole(server):
    ten_mb = json.dumps({"texts": ["x" * 10_000_000]}).encode()
    declared = server.post("/v1/predict", content=ten_mb, headers={"content-type": "application/json"})
    assert (declared.status_code, declared.json()) == (413, {"detail": f"body over {MAX_BODY_BYTES} bytes"})

    def chunks():  # no Content-Length: the limit counts what arrives
        for start in range(0, len(ten_mb), 65536):
            yield ten_mb[start : start + 65536]

    streamed = server.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
    assert (streamed.status_code, streamed.json()) == (413, {"detail": f"body over {MAX_BODY_BYTES} bytes"})
    assert server.post("/v1/predict", json={"texts": ["still up"]}).status_code == 200


def test_texts_made_of_the_bytes_that_separate_json_values_are_valid(server):
    # The bound on a body's JSON values counts these bytes inside strings too, as many as texts can hold.
    texts = [",[{:" * 12 + ",:"] * 4  # 4 texts of 50 characters, the limits of these tests
    assert server.post("/v1/predict", json={"texts": texts}).status_code == 200


def test_openapi_schema_states_the_limits_and_the_error_answers(server):
    schema = server.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/healthz", "/readyz", "/v1/predict"}
    texts = schema["components"]["schemas"]["PredictRequest"]["properties"]["texts"]
    assert (texts["minItems"], texts["maxItems"]) == (1, 4)
    assert texts["items"] == {
        "type": "string",
        "minLength": 1,
        "maxLength": 50,
        "pattern": NOT_ONLY_WHITESPACE,
    }
    responses = schema["paths"]["/v1/predict"]["post"]["responses"]
    assert set(responses) == {"200", "400", "408", "413", "415", "422", "500", "503"}
    assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ValidationErrors")
    assert set(schema["components"]["schemas"]["ErrorDetail"]["properties"]) == {"loc", "msg", "type"}
    assert all(set(responses[status]["content"]) == {"application/json"} for status in responses)
    assert "Retry-After" in responses["503"]["headers"]


def test_request_id_is_the_clients_or_a_new_one_and_each_request_is_one_json_log_line(alone):
    server, log = alone
    given = server.post("/v1/predict", json={"texts": ["logged"]}, headers={"X-Request-ID": "trace-42"})
    assert given.headers["X-Request-ID"] == "trace-42"
    made = server.get("/healthz").headers["X-Request-ID"]
    assert len(made) == 32 and int(made, 16) >= 0
    unfit = server.get("/healthz", headers={"X-Request-ID": "x" * 129}).headers["X-Request-ID"]
    assert len(unfit) == 32 and unfit != made  # too long for a log line: replaced
    by_id = access_log(log)
    assert by_id["trace-42"].items() >= {"method": "POST", "path": "/v1/predict", "status": 200}.items()
    assert by_id[made]["path"] == "/healthz" and by_id[unfit]["status"] == 200
    assert set(by_id[made]) == {"time", "request_id", "method", "path", "status", "duration_ms", "client"}


def test_metrics_count_requests_by_status_time_them_and_name_the_model(server, image_folder):
    ok = metric(server, "finsent_http_requests_total", route="/v1/predict", status="200")
    bad = metric(server, "finsent_http_requests_total", route="/v1/predict", status="422")
    runs = metric(server, "finsent_batch_texts_count")
    server.post("/v1/predict", json={"texts": TEXTS})
    server.post("/v1/predict", json={"texts": []})
    server.get("/no/such/path")
    assert metric(server, "finsent_http_requests_total", route="/v1/predict", status="200") == ok + 1
    assert metric(server, "finsent_http_requests_total", route="/v1/predict", status="422") == bad + 1
    assert metric(server, "finsent_http_requests_total", route="other", status="404") >= 1
    assert metric(server, "finsent_http_request_duration_seconds_count", route="/v1/predict") >= 2
    assert metric(server, "finsent_batch_texts_count") == runs + 1
    version = served_predictor(image_folder / "exported", "onnx_int8", 32).version
    assert metric(server, "finsent_model_info", backend="onnx_int8", version=version) == 1


@pytest.fixture(scope="module")
def batching_served(image_folder, tmp_path_factory):
    """fp32 (its results do not depend on a text's batch), a 2 s window, at most 8 texts waiting;
    behind a proxy on loopback."""
    log = tmp_path_factory.mktemp("logs") / "batching.log"
    settings = {"batch_window_ms": 2000, "max_queued_texts": 8, "forwarded_allow_ips": "127.0.0.1"}
    with served("none", image_folder, log, ["--backend", "onnx_fp32"], **settings) as (client, _):
        yield client, log


@pytest.fixture(scope="module")
def batching_server(batching_served) -> httpx.Client:
    return batching_served[0]


def test_concurrent_requests_share_one_model_run_and_each_gets_its_own_answers(batching_server, image_folder):
    requests = [TEXTS[:1], TEXTS[1:3], ["$NVDA record revenue", "rates up", "oil slides"], ["calm day"]]
    runs, texts = (
        metric(batching_server, "finsent_batch_texts_count"),
        metric(batching_server, "finsent_batch_texts_sum"),
    )
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda t: batching_server.post("/v1/predict", json={"texts": t}), requests))
    assert metric(batching_server, "finsent_batch_texts_count") == runs + 1  # one run for all 7 texts
    assert metric(batching_server, "finsent_batch_texts_sum") == texts + 7
    fp32 = served_predictor(image_folder / "exported", "onnx_fp32", 32)
    for request, answer in zip(requests, answers, strict=True):
        got = np.array([list(p["probabilities"].values()) for p in answer.json()["predictions"]])
        np.testing.assert_allclose(got, fp32.predict_proba(request), atol=1e-5)


def test_overload_is_a_503_with_retry_after_not_a_pile_up(batching_server):
    with ThreadPoolExecutor(2) as pool:
        waiting = [
            pool.submit(batching_server.post, "/v1/predict", json={"texts": ["a", "b", "c", "d"]})
            for _ in range(2)
        ]
        wait_for_waiting_texts(batching_server, 8)
        refused = batching_server.post("/v1/predict", json={"texts": ["one too many"]})
        assert (refused.status_code, refused.json()) == (503, {"detail": "overloaded, retry later"})
        assert refused.headers["Retry-After"] == "1"
        assert [future.result().status_code for future in waiting] == [200, 200]


def test_a_proxy_named_in_forwarded_allow_ips_gives_the_clients_address(batching_served):
    client, log = batching_served
    forwarded = {"X-Forwarded-For": "203.0.113.7", "X-Request-ID": "proxied"}
    assert client.get("/healthz", headers=forwarded).status_code == 200
    assert access_log(log)["proxied"]["client"] == "203.0.113.7"


def test_sigterm_answers_the_requests_in_flight_then_exits(image_folder, tmp_path):
    with served("none", image_folder, tmp_path / "server.log", batch_window_ms=1000) as (client, server):
        process = server.process
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(client.post, "/v1/predict", json={"texts": TEXTS})
            wait_for_waiting_texts(client, 3)
            process.send_signal(signal.SIGTERM)
            answer = in_flight.result()
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 3
        assert process.wait(timeout=30) == 128 + signal.SIGTERM  # run_cli's exit status for SIGTERM
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_requests_still_waiting_when_the_shutdown_timeout_ends_get_a_503(image_folder, tmp_path):
    settings = {"batch_window_ms": 60_000, "shutdown_timeout_s": 1}  # the request waits past the timeout
    with served("none", image_folder, tmp_path / "server.log", **settings) as (client, server):
        process = server.process
        with ThreadPoolExecutor(1) as pool:
            headers = {"X-Request-ID": "cut-short"}
            in_flight = pool.submit(client.post, "/v1/predict", json={"texts": TEXTS}, headers=headers)
            wait_for_waiting_texts(client, 3)
            start = time.monotonic()
            process.send_signal(signal.SIGTERM)
            answer = in_flight.result()
        assert (answer.status_code, answer.json()) == (503, {"detail": "shutting down, retry later"})
        assert (answer.headers["Retry-After"], answer.headers["X-Request-ID"]) == ("1", "cut-short")
        assert process.wait(timeout=30) == 128 + signal.SIGTERM
        assert time.monotonic() - start < 5
    assert access_log(tmp_path / "server.log")["cut-short"]["status"] == 503


def test_the_image_healthcheck_asks_the_configured_port(server):
    """The HEALTHCHECK of docker/serve.Dockerfile, run as Docker runs its exec form."""
    instruction = re.search(
        r"^HEALTHCHECK .*?CMD (\[.*?\])$", DOCKERFILE.read_text(), re.MULTILINE | re.DOTALL
    )
    program, *arguments = json.loads(instruction[1])
    assert program == "python"

    def healthcheck(port: int) -> int:
        env = {**os.environ, "FINSENT_SERVE_PORT": str(port)}
        return subprocess.run(
            [sys.executable, *arguments], env=env, capture_output=True, timeout=30
        ).returncode

    assert healthcheck(server.base_url.port) == 0
    assert healthcheck(free_port()) != 0  # nothing listens there


@pytest.mark.parametrize("settings", [ServeSettings, PredictorSettings])
def test_settings_defaults_are_their_params_yaml_section(settings, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the built-in defaults
    params = YAML(typ="safe").load((PROJECT / "params.yaml").read_text(encoding="utf-8"))
    section = params[settings.params_section]
    defaults = settings().model_dump(mode="json")
    assert defaults == {name: section.get(name, defaults[name]) for name in defaults}
    assert set(section) <= set(defaults)


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_schema(server, tmp_path):
    """A bounded fuzz run for CI, every check on; docs/serving.md gives the long one."""
    result = schemathesis_run(str(server.base_url), tmp_path)
    assert result.returncode == 0, result.stdout[-5000:]
    assert "No issues found" in result.stdout


def test_model_threads_reach_the_runtime(exported_project):
    model_file = onnx_file("onnx_int8", exported_project / "exported")
    assert OnnxPredictor(model_file, 32, threads=1).session.get_session_options().intra_op_num_threads == 1
    assert OnnxPredictor(model_file, 32).session.get_session_options().intra_op_num_threads == 0  # all cores


def test_negative_model_threads_stop_the_server_before_it_starts(exported_project):
    result = subprocess.run(
        [*finsent_command("inference.api.server"), "--model-threads", "-1"],
        cwd=exported_project,
        env={**os.environ, **SOURCE_ENV},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "error: setting model_threads (flag, FINSENT_SERVE_MODEL_THREADS or params.yaml "
        "serve.model_threads): Input should be greater than or equal to 0\n"
    )
    assert "Traceback" not in result.stderr
