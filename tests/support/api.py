"""What the tests of the HTTP API ask of a running server: a client, its metrics, its access log, raw
connections."""

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .server import Server, nginx_installed, running_server

LIMITS = {"max_texts": 4, "max_text_chars": 50}  # small, so that tests can cross them cheaply

needs_nginx = pytest.mark.skipif(
    not nginx_installed(), reason="nginx is not installed (apt-get install nginx; .ci/run installs it)"
)


def image_copy(exported_project: Path, folder: Path) -> Path:
    """What the serve image holds: the export stage's folder, no params.yaml, no dvc.lock."""
    shutil.copytree(exported_project / "exported", folder / "exported")
    return folder


@contextmanager
def served(front: str, folder: Path, log: Path, args=(), **settings) -> Iterator[tuple[httpx.Client, Server]]:
    """The real server in `folder` (see `running_server`) with the tests' small LIMITS under
    `settings`, and a client of it that keeps no connection open between requests (tests count the
    server's connections and requests in progress)."""
    with running_server(front, folder, log, args, **(LIMITS | settings)) as server:
        no_keep_alive = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=server.url, timeout=30, limits=no_keep_alive) as client:
            yield client, server


def metric(client: httpx.Client, name: str, **labels) -> float:
    """One sample of the server's /metrics (0 when the series does not exist yet)."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    return 0.0


def wait_for_waiting_texts(client: httpx.Client, texts: int) -> None:
    for _ in range(300):
        if metric(client, "finsent_waiting_texts") == texts:
            return
        time.sleep(0.01)
    raise AssertionError(f"never {texts} texts waiting")


def access_log_lines(log: Path, start: int = 0, at_least: int = 0) -> list[dict]:
    """The server's access-log lines (JSON on stdout) from byte `start` of its log on, once there are
    `at_least` of them (or 5 s have passed): a line is written once its answer is sent, later on a busy
    machine."""
    for _ in range(25):
        time.sleep(0.2)
        text = log.read_bytes()[start:].decode("utf-8")
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        if len(lines) >= at_least:
            break
    return lines


def settled_log_size(log: Path) -> int:
    """The size of the server's log once no line has come for 0.3 s: where the next request's lines
    start, after the lines of the requests answered before."""
    size = -1
    while size != log.stat().st_size:
        size = log.stat().st_size
        time.sleep(0.3)
    return size


def access_log(log: Path) -> dict[str, dict]:
    """The server's access-log lines so far, by request id."""
    return {line["request_id"]: line for line in access_log_lines(log)}


def json_answers(raw: bytes) -> list[tuple[int, dict, dict]]:
    """Status, headers and JSON body of each HTTP answer in `raw` (several when pipelined)."""
    answers = []
    while raw:
        head, raw = raw.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines)
        length = int(headers["content-length"])
        answers.append((int(status_line.split()[1]), headers, json.loads(raw[:length])))
        raw = raw[length:]
    return answers


def schemathesis_run(base_url: str, folder: Path) -> subprocess.CompletedProcess:
    """A bounded fuzz run against the API at `base_url`, with every check of Schemathesis on
    (schemathesis.toml) and its caches in `folder`; docs/serving.md gives the long one."""
    project = Path(__file__).resolve().parents[2]
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "st"),
            "--config-file",
            str(project / "schemathesis.toml"),
            "run",
            f"{base_url}/openapi.json",
            "--max-examples",
            "30",
            "--seed",
            "1",
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
