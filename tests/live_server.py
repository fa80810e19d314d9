"""The real `finsent-serve` on a loopback port, and what the tests of tests/test_serve.py and
tests/test_hostile_clients.py ask of it."""

import json
import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from conftest import SOURCE_ENV, finsent_command
from prometheus_client.parser import text_string_to_metric_families

LIMITS = {"max_texts": 4, "max_text_chars": 50}  # small, so that tests can cross them cheaply


def image_copy(exported_project: Path, folder: Path) -> Path:
    """What the serve image holds: the export stage's folder, no params.yaml, no dvc.lock."""
    shutil.copytree(exported_project / "exported", folder / "exported")
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(folder: Path, log: Path, **settings):
    """The real server, started as its documented command in `folder` on a free loopback port, with
    `settings` as FINSENT_SERVE_* variables (as a container sets them); stdout and stderr to `log`."""
    port = free_port()
    env = {f"FINSENT_SERVE_{name.upper()}": str(value) for name, value in (LIMITS | settings).items()}
    with log.open("ab") as log_file:
        process = subprocess.Popen(
            [*finsent_command("inference.api.server"), "--port", str(port)],
            cwd=folder,
            env={**os.environ, **SOURCE_ENV, **env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    # No connection kept open between requests: tests count the server's open connections.
    no_keep_alive = httpx.Limits(max_keepalive_connections=0)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, limits=no_keep_alive)
    try:
        for _ in range(600):
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, log.read_text()
            time.sleep(0.1)
        yield client, process
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=30)


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


def open_connection(client: httpx.Client, first_bytes: bytes) -> socket.socket:
    connection = socket.create_connection((client.base_url.host, client.base_url.port))
    connection.sendall(first_bytes)
    connection.settimeout(10)
    return connection


def access_log(log: Path) -> dict[str, dict]:
    """The server's access-log lines so far, by request id."""
    time.sleep(0.2)  # a line is written once its answer is sent
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return {line["request_id"]: line for line in lines}
