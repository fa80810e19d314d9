"""The server as it ships (nginx in front, `front: nginx`) against hostile or broken clients: each attack
against the real processes on loopback, in seconds. Skipped where nginx is not installed."""

import contextlib
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from support.api import (
    access_log,
    access_log_lines,
    image_copy,
    json_answers,
    metric,
    needs_nginx,
    served,
    settled_log_size,
)
from support.counters import connect, read_until_closed, resident_mib, send_until_closed

from finsent.errors import FinsentError
from finsent.inference.api.settings import ServeSettings
from finsent.inference.settings import load_settings

pytestmark = needs_nginx

REQUEST_TIMEOUT_S = 2
HOSTILE = {
    "max_text_chars": 1000,
    "request_timeout_s": REQUEST_TIMEOUT_S,
    "max_connections": 64,
    "batch_window_ms": 500,  # long enough for concurrent requests to share a run
}
MAX_HEADER_BYTES = 16384  # the default
MAX_BODY_BYTES = 4 * (12 * 1000 + 8) + 1024
MAX_BODY_VALUES = 4 * (1000 + 1) + 64
LONG_TEXT = "word " * 190  # more tokens than the tiny model has positions
JSON_HEADERS = {"content-type": "application/json"}
MIB = 2**20


@pytest.fixture(scope="module")
def hostile_served(exported_project, tmp_path_factory):
    """The server on an image whose tokenizer lets a long text through to a model that then fails on it
    (the tokenizer's length raised past the model's positions): a model that raises on some inputs."""
    folder = image_copy(exported_project, tmp_path_factory.mktemp("image"))
    config_file = folder / "exported" / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) | {"model_max_length": 100_000, "max_length": 100_000}
    config_file.write_text(json.dumps(config))
    log = tmp_path_factory.mktemp("logs") / "hostile.log"
    with served("nginx", folder, log, **HOSTILE) as (client, server):
        yield client, server, log


@pytest.fixture(scope="module")
def server(hostile_served) -> httpx.Client:
    return hostile_served[0]


def raw(server: httpx.Client, request_bytes: bytes) -> bytes:
    """What the server answers to `request_bytes` on a connection of their own, until it closes it."""
    connection = connect(server.base_url.host, server.base_url.port)
    with contextlib.suppress(ConnectionResetError):  # refused while the rest came: its answer still arrives
        connection.sendall(request_bytes)
    return read_until_closed(connection)


def request(path: str, request_id: str, body: bytes = b"", headers: bytes = b"") -> bytes:
    """One HTTP/1.1 request's bytes: a POST of JSON `body` (unless `headers` give a Content-Type),
    else a GET."""
    head = b"POST" if body else b"GET"
    head += b" %s HTTP/1.1\r\nHost: x\r\nX-Request-ID: %s\r\n" % (path.encode(), request_id.encode())
    if body:
        head += b"content-length: %d\r\n" % len(body)
        if b"content-type:" not in headers:
            head += b"content-type: application/json\r\n"
    return head + headers + b"\r\n" + body


HEADER_FLOODS = [  # the first bytes, the bytes sent again and again, the answer
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Flood: ", b"a", 431),  # one endless header
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"a: b\r\n", 431),  # endless small headers
    (b"GET /", b"a", 414),  # an endless URL
]


def test_a_header_flood_is_cut_at_the_limit_and_the_server_stays_responsive(hostile_served):
    server, served_process, log = hostile_served
    pid, start = served_process.process.pid, settled_log_size(log)
    memory = resident_mib(pid)

    def flood(first_bytes: bytes, filler: bytes, seconds: float = 1.5) -> list[tuple[float, int, bytes]]:
        """Flood connection after connection for `seconds`: how long each lasted, what it pushed, what it
        got."""
        end, connections = time.monotonic() + seconds, []
        while time.monotonic() < end:
            connection = connect(server.base_url.host, server.base_url.port, first_bytes)
            lasted, sent = send_until_closed(
                connection, filler * (65536 // len(filler)), REQUEST_TIMEOUT_S + 1
            )
            connections.append((lasted, sent, read_until_closed(connection)))
        return connections

    answers, latencies = Counter(), []
    with ThreadPoolExecutor(32) as pool:
        floods = [pool.submit(flood, *HEADER_FLOODS[i % 3][:2]) for i in range(32)]
        while not all(future.done() for future in floods):
            started = time.monotonic()
            health = server.get("/healthz")
            latencies.append(time.monotonic() - started)
            assert health.status_code == 200
            answers[200, health.headers["x-request-id"]] += 1
    assert max(latencies) < 1
    for i, future in enumerate(floods):
        expected = HEADER_FLOODS[i % 3][2]
        detail = "request line" if expected == 414 else "request line and headers"
        for lasted, sent, answer in future.result():
            ((status, headers, body),) = json_answers(answer)
            assert (status, body) == (expected, {"detail": f"{detail} over {MAX_HEADER_BYTES} bytes"})
            assert headers["connection"] == "close" and len(headers["x-request-id"]) == 32
            assert lasted < 1 and sent < MIB  # the server read at most what the client pushed
            answers[status, headers["x-request-id"]] += 1
    assert resident_mib(pid) - memory < 50
    lines = access_log_lines(log, start, sum(answers.values()))
    logged = Counter((line["status"], line["request_id"]) for line in lines)
    assert logged == answers  # each answer, refusals included, one line of the access log with its id


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_after_a_413_the_connection_is_closed_and_the_rest_of_the_body_is_not_read(server, framing):
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\nX-Request-ID: big\r\n"
    if framing == "content-length":  # refused on its Content-Length, before any of the body is read
        head, chunk, before_413 = head + b"Content-Length: 1000000000\r\n\r\n", b"x" * 65536, 0
    else:  # refused once the limit has arrived
        head, chunk = head + b"Transfer-Encoding: chunked\r\n\r\n", b"10000\r\n" + b"x" * 65536 + b"\r\n"
        before_413 = MAX_BODY_BYTES + len(chunk)
    connection = connect(server.base_url.host, server.base_url.port, head)
    lasted, sent = send_until_closed(connection, chunk, REQUEST_TIMEOUT_S + 1)
    ((status, headers, body),) = json_answers(read_until_closed(connection))
    assert (status, body) == (413, {"detail": f"body over {MAX_BODY_BYTES} bytes"})
    assert (headers["connection"], headers["x-request-id"]) == ("close", "big")
    assert lasted < 1  # not read until the request timeout
    assert sent - before_413 < MIB  # the server read at most what the client pushed


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NOT HTTP\r\n\r\n",
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /healthz HTTP/1.1\r\nX-Request-ID: no-host\r\n\r\n",  # RFC 9112: a Host is required
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    ],
    ids=["not-http", "bad-chunk-size", "no-host", "two-hosts", "two-lengths", "length-and-chunked"],
)
def test_a_request_the_front_cannot_read_is_a_json_400_logged_with_its_id(hostile_served, request_bytes):
    server, _, log = hostile_served
    ((status, headers, body),) = json_answers(raw(server, request_bytes))
    assert (status, body) == (400, {"detail": "Invalid HTTP request received."})
    assert headers["connection"] == "close"
    assert access_log(log)[headers["x-request-id"]]["status"] == 400


def test_http_1_0_without_host_is_served(server):
    ((status, _, body),) = json_answers(raw(server, b"GET /healthz HTTP/1.0\r\n\r\n"))
    assert (status, body) == (200, {"status": "ok"})


def test_requests_pipelined_before_unreadable_bytes_are_each_answered_and_those_after_never_run(
    hostile_served,
):
    server, _, log = hostile_served
    runs = metric(server, "finsent_batch_texts_count")
    start = settled_log_size(log)
    pipelined = (
        request("/v1/predict", "good-1", b'{"texts": ["first"]}')
        + request("/v1/predict", "bad", b'{"texts": []}')
        + request("/v1/predict", "good-2", b'{"texts": ["second"]}')
        + b"GARBAGE\r\n\r\n"
        + request("/v1/predict", "after", b'{"texts": ["never"]}')
    )
    answers = json_answers(raw(server, pipelined))
    assert [(status, headers["x-request-id"]) for status, headers, _ in answers[:3]] == [
        (200, "good-1"),
        (422, "bad"),
        (200, "good-2"),
    ]
    assert answers[3][0] == 400 and len(answers) == 4
    logged = [(line["request_id"], line["status"]) for line in access_log_lines(log, start, len(answers))]
    assert logged == [(headers["x-request-id"], status) for status, headers, _ in answers]
    assert metric(server, "finsent_batch_texts_count") == runs + 2  # "after" never ran
    assert "Traceback" not in log.read_text()


def test_every_answer_is_one_access_log_line_with_its_id_and_status(hostile_served):
    server, _, log = hostile_served
    start = settled_log_size(log)
    flood = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: flood\r\nX-Flood: " + b"a" * 40000
    requests = [
        request("/healthz", "ok"),
        request("/v1/predict", "valid", b'{"texts": ["fine"]}'),
        request("/v1/predict", "invalid", b'{"texts": "not a list"}'),
        request("/v1/predict", "not-json", b"texts=a", b"content-type: text/plain\r\n"),
        request("/no/such/path", "missing"),
        request("/finsent-errors/431", "internal-page"),
        request("/v1/predict", "declared-too-large", b"", b"content-length: 99999999\r\n"),
        request("/healthz", "http-2-line").replace(b"HTTP/1.1", b"HTTP/2.0"),
        b"GET /healthz HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello
        flood,
    ]
    answers = Counter()
    # Each on a connection of its own, all at once: a kept-alive one ends only at the keep-alive timeout.
    with ThreadPoolExecutor(len(requests)) as pool:
        for answered in pool.map(lambda request_bytes: raw(server, request_bytes), requests):
            for status, headers, _ in json_answers(answered):
                answers[headers["x-request-id"], status] += 1
    assert set(status for _, status in answers) == {200, 400, 404, 413, 415, 422, 431, 505}
    logged = access_log_lines(log, start, sum(answers.values()))
    assert Counter((line["request_id"], line["status"]) for line in logged) == answers


def test_requests_in_progress_over_the_limit_get_a_json_503(hostile_served):
    server, _, log = hostile_served
    host, port = server.base_url.host, server.base_url.port
    in_progress = (  # headers whole, and part of the body
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 50\r\n\r\n{"
    )
    held = [connect(host, port, in_progress) for _ in range(HOSTILE["max_connections"] - 1)]
    held.append(connect(host, port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"))  # headers unfinished: no place
    time.sleep(0.2)
    assert server.post("/v1/predict", json={"texts": ["the last place"]}).status_code == 200
    held.append(connect(host, port, in_progress))
    time.sleep(0.2)
    over = server.post("/v1/predict", json={"texts": ["one too many"]}, headers={"X-Request-ID": "over"})
    assert (over.status_code, over.json()) == (503, {"detail": "too many requests in progress, retry later"})
    assert (over.headers["Retry-After"], over.headers["X-Request-ID"]) == ("1", "over")
    assert access_log(log)["over"]["status"] == 503
    for connection in held:
        read_until_closed(connection)  # cut off after the request timeout: the places are free again
    assert server.post("/v1/predict", json={"texts": ["in"]}).status_code == 200


def test_slow_or_silent_clients_are_cut_off_within_the_request_timeout(hostile_served):
    server, _, log = hostile_served
    start = time.monotonic()
    post = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
    silent, slow_headers, drip_headers, slow_body, drip_body = (
        connect(server.base_url.host, server.base_url.port, first_bytes)
        for first_bytes in (
            b"",  # opens and says nothing
            post + b"X-Request-ID: slow-headers\r\n",  # the headers never end
            post + b"X-Request-ID: drip-headers\r\n",  # the headers come a byte at a time
            post + b'X-Request-ID: slow-body\r\ncontent-length: 100\r\n\r\n{"texts"',  # the body never ends
            post + b'X-Request-ID: drip-body\r\ncontent-length: 1000\r\n\r\n{"texts"',  # a byte at a time
        )
    )
    while time.monotonic() - start < REQUEST_TIMEOUT_S + 3:  # a byte every 0.2 s: never idle for long
        try:
            drip_headers.send(b"a")
            drip_body.send(b" ")
        except OSError:
            break
        time.sleep(0.2)
    for connection in (silent, slow_headers, drip_headers):
        assert read_until_closed(connection) == b""  # closed by the server, nothing said
    for connection, request_id in ((slow_body, "slow-body"), (drip_body, "drip-body")):
        ((status, headers, body),) = json_answers(read_until_closed(connection))
        assert (status, body) == (408, {"detail": f"request not received within {REQUEST_TIMEOUT_S} s"})
        assert headers["x-request-id"] == request_id
    assert REQUEST_TIMEOUT_S - 0.1 < time.monotonic() - start < REQUEST_TIMEOUT_S + 3
    logged = access_log(log)
    # nginx logs the requests it cut off (and sends nothing); the API's 408s are answers, logged too.
    cut_off = ("slow-headers", "drip-headers", "slow-body", "drip-body")
    assert [logged[name]["status"] for name in cut_off] == [408] * 4
    assert server.post("/v1/predict", json={"texts": ["still up"]}).status_code == 200


def test_a_model_error_fails_only_its_own_request_as_json_with_its_id(server):
    runs = metric(server, "finsent_batch_texts_count")
    requests = {"long": [LONG_TEXT], "short": ["Fed holds rates"], "other": ["$TSLA deliveries miss"]}

    def post(request_id: str) -> httpx.Response:
        return server.post(
            "/v1/predict", json={"texts": requests[request_id]}, headers={"X-Request-ID": request_id}
        )

    with ThreadPoolExecutor(len(requests)) as pool:
        answers = dict(zip(requests, pool.map(post, requests), strict=True))
    assert metric(server, "finsent_batch_texts_count") == runs + 4  # the three together, then each alone
    assert (answers["long"].status_code, answers["long"].json()) == (500, {"detail": "internal server error"})
    assert [answers[name].status_code for name in ("short", "other")] == [200, 200]
    assert all(answer.headers["X-Request-ID"] == request_id for request_id, answer in answers.items())


def test_a_body_of_many_values_or_fields_is_refused_without_validating_each(server):
    def post(body: bytes) -> httpx.Response:
        return server.post("/v1/predict", content=body, headers=JSON_HEADERS)

    many_values = post(b'{"texts": [' + b"0," * MAX_BODY_VALUES + b"0]}")
    assert (many_values.status_code, many_values.json()) == (
        413,
        {"detail": f"body over {MAX_BODY_VALUES} JSON values"},
    )
    many_fields = post(json.dumps({f"k{i}": 0 for i in range(1000)}).encode())
    assert (many_fields.status_code, many_fields.json()["detail"]) == (
        422,
        [
            {
                "loc": ["body"],
                "msg": "Object should have at most 10 fields, not 1000",
                "type": "too_many_fields",
            }
        ],
    )


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (b'x", "status": 200, "y": "z', False),  # spaces: not a request id
        (b"tab\there", False),
        (b"\xc3\xa9t\xc3\xa9", False),  # not ASCII
        (b"x" * 129, False),
        (b'a"b\\c{}', True),  # printable ASCII: kept, and escaped in the log line
    ],
)
def test_a_clients_request_id_is_kept_only_when_printable_and_the_log_stays_json(hostile_served, given, kept):
    server, _, log = hostile_served
    start = settled_log_size(log)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Request-ID: "  # closed once answered
    ((_, headers, _),) = json_answers(raw(server, head + given + b"\r\n\r\n"))
    request_id = headers["x-request-id"]
    assert request_id == given.decode("latin-1") if kept else len(request_id) == 32
    assert [line["request_id"] for line in access_log_lines(log, start, 1)] == [request_id]


def test_a_forwarded_for_header_does_not_change_the_logged_client(hostile_served):
    server, _, log = hostile_served
    headers = {"X-Forwarded-For": "6.6.6.6", "X-Request-ID": "spoofed"}
    assert server.get("/healthz", headers=headers).status_code == 200
    assert access_log(log)["spoofed"]["client"] == "127.0.0.1"


def test_a_trailing_slash_is_a_404_not_a_redirect_that_echoes_the_host(server):
    answer = server.get("/healthz/", headers={"Host": "evil.example"})
    assert (answer.status_code, answer.json()) == (404, {"detail": "Not Found"})
    assert "location" not in answer.headers and len(answer.headers["X-Request-ID"]) == 32


def test_max_texts_over_max_queued_texts_stops_the_server_before_it_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml: the defaults, max_queued_texts 256
    with pytest.raises(FinsentError) as error:
        load_settings(ServeSettings, max_texts=300)
    assert str(error.value) == (
        "serve settings: max_texts (300) is over max_queued_texts (256): a request of more than "
        "max_queued_texts texts would always get a 503"
    )
