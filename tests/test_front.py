"""nginx in front of the API (`front: nginx`, as the serve image runs it): its configuration, start,
shutdown and failures, with the real nginx and finsent-serve on loopback. Its answers to hostile
clients: tests/test_hostile_clients.py. Skipped where nginx is not installed, but the test of the
error for a missing nginx."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import PROJECT, SOURCE_ENV, finsent_command
from support.api import access_log, image_copy, needs_nginx, schemathesis_run, served, wait_for_waiting_texts
from support.counters import process_tree
from support.server import free_port

from finsent.errors import FinsentError
from finsent.inference.api import front
from finsent.inference.api.front import nginx_config, nginx_executable
from finsent.inference.api.settings import ServeSettings

TEXTS = ["$AAPL beats estimates, shares up 5%", "Fed holds rates", "$TSLA deliveries miss"]


@pytest.fixture(scope="module")
def image_folder(exported_project, tmp_path_factory) -> Path:
    return image_copy(exported_project, tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="module")
def fronted(image_folder, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with served("nginx", image_folder, log, max_text_chars=1000) as (client, _):  # bodies up to 49 kB
        yield client


def nginx_processes(server_pid: int) -> tuple[int, list[int]]:
    """nginx's master (a child of finsent-serve) and its workers."""
    tree = process_tree(server_pid)
    nginx = [pid for pid in tree if Path(f"/proc/{pid}/comm").read_text().strip() == "nginx"]
    (master,) = [pid for pid in nginx if _parent(pid) == server_pid]
    return master, [pid for pid in nginx if pid != master]


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@needs_nginx
@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"host": "0.0.0.0", "forwarded_allow_ips": "*"},
        {"host": "::", "forwarded_allow_ips": "10.0.0.0/8, 192.168.1.1,::1"},
        {"request_timeout_s": 0.25, "max_connections": 1, "max_header_bytes": 1024},
    ],
    ids=["defaults", "all-addresses", "ipv6", "small-limits"],
)
def test_the_configuration_is_one_nginx_accepts(settings, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml: the defaults under `settings`
    config = tmp_path / "nginx.conf"
    config.write_text(nginx_config(ServeSettings(**settings), tmp_path, tmp_path / "api.sock"))
    test = [nginx_executable(), "-t", "-q", "-e", "stderr", "-p", str(tmp_path), "-c", str(config)]
    result = subprocess.run(test, capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stderr) == (0, "")


def test_without_nginx_front_nginx_is_one_line_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(front, "NGINX_PATHS", (str(tmp_path),))
    with pytest.raises(FinsentError) as error:
        nginx_executable()
    assert str(error.value) == (
        "serve setting front: nginx is not installed (Debian: apt-get install nginx); "
        "front none runs the API alone"
    )


@needs_nginx
def test_sigterm_answers_the_requests_in_flight_refuses_new_ones_then_stops_nginx(image_folder, tmp_path):
    log = tmp_path / "server.log"
    with served("nginx", image_folder, log, batch_window_ms=1000) as (client, server):
        master, workers = nginx_processes(server.process.pid)
        nginx = [master, *workers]
        assert len(workers) == 1
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(client.post, "/v1/predict", json={"texts": TEXTS})
            wait_for_waiting_texts(client, 3)
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)  # the API stops listening; nginx still answers
            during = client.post("/v1/predict", json={"texts": TEXTS}, headers={"X-Request-ID": "during"})
            answer = in_flight.result()
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 3
        assert (during.status_code, during.json()) == (503, {"detail": "not available, retry later"})
        assert (during.headers["Retry-After"], during.headers["X-Request-ID"]) == ("1", "during")
        assert server.process.wait(timeout=30) == 128 + signal.SIGTERM  # run_cli's exit status for SIGTERM
        assert not any(alive(pid) for pid in nginx)
    assert access_log(log)["during"]["status"] == 503
    assert "Traceback" not in log.read_text()


@needs_nginx
def test_requests_still_waiting_when_the_shutdown_timeout_ends_get_a_503_through_nginx(
    image_folder, tmp_path
):
    log = tmp_path / "server.log"
    settings = {"batch_window_ms": 60_000, "shutdown_timeout_s": 1}  # the request waits past the timeout
    with served("nginx", image_folder, log, **settings) as (client, server):
        with ThreadPoolExecutor(1) as pool:
            headers = {"X-Request-ID": "cut-short"}
            in_flight = pool.submit(client.post, "/v1/predict", json={"texts": TEXTS}, headers=headers)
            wait_for_waiting_texts(client, 3)
            start = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            answer = in_flight.result()
        assert (answer.status_code, answer.json()) == (503, {"detail": "shutting down, retry later"})
        assert (answer.headers["Retry-After"], answer.headers["X-Request-ID"]) == ("1", "cut-short")
        assert server.process.wait(timeout=30) == 128 + signal.SIGTERM
        assert time.monotonic() - start < 5
    assert access_log(log)["cut-short"]["status"] == 503


@needs_nginx
def test_when_nginx_dies_the_api_stops_with_one_line(image_folder, tmp_path):
    log = tmp_path / "server.log"
    with served("nginx", image_folder, log) as (_, server):
        master, workers = nginx_processes(server.process.pid)
        os.kill(master, signal.SIGKILL)
        assert server.process.wait(timeout=30) == 1
        assert workers and not any(alive(pid) for pid in workers)  # a worker outlives its master else
    assert log.read_text().splitlines()[-1] == "error: front: nginx was killed by SIGKILL"


@needs_nginx
def test_when_finsent_serve_is_killed_nginx_does_not_outlive_it(image_folder, tmp_path):
    with served("nginx", image_folder, tmp_path / "server.log") as (_, server):
        master, workers = nginx_processes(server.process.pid)
        nginx = [master, *workers]
        server.process.kill()
        server.process.wait()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in nginx) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in nginx)


@needs_nginx
def test_a_port_in_use_stops_the_server_with_nginxs_message_and_one_line(image_folder):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen()
        env = {"FINSENT_SERVE_FRONT": "nginx", "FINSENT_SERVE_PORT": str(taken.getsockname()[1])}
        result = subprocess.run(
            finsent_command("inference.api.server"),
            cwd=image_folder,
            env={**os.environ, **SOURCE_ENV, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert "Address already in use" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == "error: front: nginx exited with status 1 (its message above)"


@needs_nginx
def test_a_proxy_named_in_forwarded_allow_ips_gives_the_clients_address(image_folder, tmp_path):
    log = tmp_path / "server.log"
    with served("nginx", image_folder, log, forwarded_allow_ips="127.0.0.1") as (client, _):
        forwarded = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7", "X-Request-ID": "proxied"}
        assert client.get("/healthz", headers=forwarded).status_code == 200
    assert access_log(log)["proxied"]["client"] == "203.0.113.7"  # the address the proxy saw


@needs_nginx
def test_an_answer_the_api_gives_before_reading_a_body_reaches_the_client(fronted):
    """Not a 503: the API leaves nginx's connection open, so that nginx's sending of the rest of the
    body does not fail."""
    body, headers = b'{"texts": ["' + b"x" * 40_000 + b'"]}', {"content-type": "application/json"}
    for _ in range(20):
        assert fronted.put("/v1/predict", content=body, headers=headers).status_code == 405
        assert fronted.post("/no/such/path", content=body, headers=headers).status_code == 404


@needs_nginx
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v1/predict", "/no/such/path"])
def test_trace_which_nginx_refuses_itself_gets_the_apis_405(fronted, path):
    api, nginx = fronted.request("PATCH", path), fronted.request("TRACE", path)
    if api.status_code == 404:  # the API's 404 comes first; nginx does not know the paths
        api = fronted.request("PATCH", "/healthz")
    assert (nginx.status_code, nginx.json(), nginx.headers["Allow"]) == (
        405,
        api.json(),
        api.headers["Allow"],
    )


@needs_nginx
def test_schemathesis_finds_nothing_through_the_front(fronted, tmp_path):
    """What ships (nginx in front) answers as the schema says too: nginx's own answers among them."""
    result = schemathesis_run(str(fronted.base_url), tmp_path)
    assert result.returncode == 0, result.stdout[-5000:]
    assert "No issues found" in result.stdout


def test_the_installed_package_holds_nginxs_configuration(tmp_path):
    """MANIFEST.in puts nginx.conf into the wheel that `pip install .` (the serve image) installs."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "MANIFEST.in", "src"):
        copy = shutil.copytree if (PROJECT / name).is_dir() else shutil.copy
        copy(PROJECT / name, source / name)
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(tmp_path),
        ".",
    ]
    subprocess.run(build, cwd=source, check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("finsent-*.whl")
    assert "finsent/inference/api/nginx.conf" in zipfile.ZipFile(wheel).namelist()
