"""The server against hostile clients, each attack against the real server on loopback, in seconds."""

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from live_server import access_log, image_copy, metric, open_connection, running_server

from finsent.errors import FinsentError
from finsent.inference.api.settings import ServeSettings
from finsent.inference.settings import load_settings

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
SERVER_READ_BYTES = 256 * 1024  # the most uvloop reads from a socket at once
JSON_HEADERS = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def hostile_served(exported_project, tmp_path_factory):
    """The server on an image whose tokenizer lets a long text through to a model that then fails on it
    (the tokenizer's length raised past the model's positions): a model that raises on some inputs."""
    folder = image_copy(exported_project, tmp_path_factory.mktemp("image"))
    config_file = folder / "exported" / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) | {"model_max_length": 100_000, "max_length": 100_000}
    config_file.write_text(json.dumps(config))
    log = tmp_path_factory.mktemp("logs") / "hostile.log"
    with running_server(folder, log, **HOSTILE) as (client, process):
        yield client, process.pid, log


@pytest.fixture(scope="module")
def server(hostile_served) -> httpx.Client:
    return hostile_served[0]


def answer_of(connection: socket.socket) -> bytes:
    """All the server sends until it closes the connection."""
    answer = b""
    try:
        while chunk := connection.recv(65536):
            answer += chunk
    except ConnectionResetError:  # closed with bytes of ours unread: what it sent before still arrives
        pass
    connection.close()
    return answer


def json_answer(answer: bytes) -> tuple[int, dict, dict]:
    """Status, headers and JSON body of a raw HTTP answer."""
    head, body = answer.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, json.loads(body)


def send_until_closed(connection: socket.socket, chunk: bytes, seconds: float) -> float:
    """Send `chunk` again and again for `seconds` at most; the seconds until the server closed."""
    connection.settimeout(seconds)
    start = time.monotonic()
    try:
        while time.monotonic() - start < seconds:
            connection.sendall(chunk)
    except OSError:  # closed by the server
        pass
    return time.monotonic() - start


def resident_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


HEADER_FLOODS = [
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Flood: ", b"a"),  # one endless header
    (b"GET /", b"a"),  # an endless URL
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"a: b\r\n"),  # endless small headers
]


def test_a_header_flood_is_cut_at_the_limit_with_a_431_and_the_server_stays_responsive(hostile_served):
    server, pid, _ = hostile_served
    received, memory = metric(server, "finsent_http_received_bytes_total"), resident_mib(pid)

    def flood(first_bytes: bytes, filler: bytes, seconds: float = 1.5) -> list[tuple[float, bytes]]:
        """Flood connection after connection for `seconds`: how long each lasted, what it got."""
        end, connections = time.monotonic() + seconds, []
        while time.monotonic() < end:
            connection = open_connection(server, first_bytes)
            lasted = send_until_closed(connection, filler * (65536 // len(filler)), REQUEST_TIMEOUT_S + 1)
            connections.append((lasted, answer_of(connection)))
        return connections

    with ThreadPoolExecutor(32) as pool:
        floods = [pool.submit(flood, *HEADER_FLOODS[i % len(HEADER_FLOODS)]) for i in range(32)]
        latencies = []
        while not all(future.done() for future in floods):
            start = time.monotonic()
            assert server.get("/healthz").status_code == 200
            latencies.append(time.monotonic() - start)
        connections = [connection for future in floods for connection in future.result()]
    assert max(latencies) < 1
    for lasted, answer in connections:
        status, headers, body = json_answer(answer)
        assert (status, body) == (431, {"detail": f"request line and headers over {MAX_HEADER_BYTES} bytes"})
        assert headers["connection"] == "close" and len(headers["x-request-id"]) == 32
        assert lasted < 1
    # Each connection: its headers' room, and at most one read past it.
    read = metric(server, "finsent_http_received_bytes_total") - received
    assert read < len(connections) * (MAX_HEADER_BYTES + SERVER_READ_BYTES)
    assert resident_mib(pid) - memory < 50


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_after_a_413_the_connection_is_closed_and_the_rest_of_the_body_is_not_read(server, framing):
    received = metric(server, "finsent_http_received_bytes_total")
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\nX-Request-ID: big\r\n"
    if framing == "content-length":  # refused on its Content-Length, before any of the body is read
        head, chunk, before_413 = head + b"Content-Length: 1000000000\r\n\r\n", b"x" * 65536, 0
    else:  # refused once the limit has arrived
        head, chunk = head + b"Transfer-Encoding: chunked\r\n\r\n", b"10000\r\n" + b"x" * 65536 + b"\r\n"
        before_413 = MAX_BODY_BYTES + len(chunk)
    connection = open_connection(server, head)
    lasted = send_until_closed(connection, chunk, REQUEST_TIMEOUT_S + 1)
    status, headers, body = json_answer(answer_of(connection))
    assert (status, body) == (413, {"detail": f"body over {MAX_BODY_BYTES} bytes"})
    assert (headers["connection"], headers["x-request-id"]) == ("close", "big")
    assert lasted < 1  # not read until the request timeout
    read = metric(server, "finsent_http_received_bytes_total") - received
    assert read < len(head) + before_413 + 2**20


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NOT HTTP\r\n\r\n",
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["not-http", "bad-chunk-size"],
)
def test_a_request_the_parser_refuses_is_a_json_400_and_the_connection_closes(server, request_bytes):
    status, headers, body = json_answer(answer_of(open_connection(server, request_bytes)))
    assert (status, body) == (400, {"detail": "Invalid HTTP request received."})
    assert headers["connection"] == "close" and len(headers["x-request-id"]) == 32


def test_max_connections_are_served_and_one_more_gets_a_json_503(server):
    url = f"{server.base_url}/v1/predict"
    idle = [open_connection(server, b"") for _ in range(HOSTILE["max_connections"] - 1)]
    assert httpx.post(url, json={"texts": ["the last place"]}).status_code == 200
    idle.append(open_connection(server, b""))
    over = httpx.post(url, json={"texts": ["one too many"]}, headers={"X-Request-ID": "over"})
    assert (over.status_code, over.json()) == (503, {"detail": "too many open connections, retry later"})
    assert (over.headers["Retry-After"], over.headers["X-Request-ID"], over.headers["connection"]) == (
        "1",
        "over",
        "close",
    )
    for connection in idle:
        assert connection.recv(1000) == b""  # cut off after the request timeout: the places are free again
        connection.close()
    assert httpx.post(url, json={"texts": ["in"]}).status_code == 200


def test_slow_or_silent_clients_are_cut_off_and_only_a_cut_body_is_logged(hostile_served):
    server, _, log = hostile_served
    start = time.monotonic()
    connections = [
        open_connection(server, b""),  # opens and says nothing
        open_connection(  # the headers never end
            server, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Request-ID: slow-headers\r\n"
        ),
        open_connection(  # the body never ends
            server,
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b'X-Request-ID: slow-body\r\ncontent-length: 100\r\n\r\n{"texts"',
        ),
    ]
    for connection in connections:
        assert connection.recv(1000) == b""  # closed by the server, nothing said
        connection.close()
    assert REQUEST_TIMEOUT_S - 0.1 < time.monotonic() - start < REQUEST_TIMEOUT_S + 3
    logged = access_log(log)
    assert "slow-headers" not in logged  # no app saw it
    assert logged["slow-body"]["status"] == 400  # the app saw its client go away
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
