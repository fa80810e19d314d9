"""The real `finsent-serve` on a free loopback port, as the tests and scripts/ start it, alone or with
nginx in front (`front: nginx`, as the serve image runs it)."""

import http.client
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from finsent.errors import FinsentError
from finsent.inference.api.front import nginx_executable

from . import SOURCE_ENV, finsent_command

READY_TIMEOUT_S = 300
"""Only against a server that hangs: a start on a 2-core machine busy with other work can take minutes."""


def nginx_installed() -> bool:
    """Whether `front: nginx` can run here."""
    try:
        nginx_executable()
    except FinsentError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Server:
    url: str
    port: int
    process: subprocess.Popen
    """finsent-serve's process; with nginx in front, nginx's processes are its descendants."""


@contextmanager
def running_server(
    front: str,
    folder: Path | None = None,
    log: Path | None = None,
    args: Sequence[str] = (),
    **settings,
) -> Iterator[Server]:
    """finsent-serve `args` with `front` ("nginx" or "none"), started in `folder` (default: here) on a
    free loopback port with `settings` as FINSENT_SERVE_* variables (as a container sets them), once
    its /readyz answers 200. Its stdout and stderr go to `log` (default: nowhere). SIGTERM on exit."""
    port = free_port()
    env = {f"FINSENT_SERVE_{name.upper()}": str(value) for name, value in settings.items()}
    env |= {"FINSENT_SERVE_FRONT": front, "FINSENT_SERVE_HOST": "127.0.0.1", "FINSENT_SERVE_PORT": str(port)}
    with open(log or os.devnull, "ab") as output:
        process = subprocess.Popen(
            [*finsent_command("inference.api.server"), *args],
            cwd=folder,
            env={**os.environ, **SOURCE_ENV, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_ready(process, port, log)
        yield Server(f"http://127.0.0.1:{port}", port, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # nginx, if any, gets SIGTERM when its parent dies
            process.kill()
            process.wait()


def _wait_until_ready(process: subprocess.Popen, port: int, log: Path | None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = log.read_text(errors="replace")[-3000:] if log else ""
            raise RuntimeError(f"finsent-serve exited with status {process.returncode}\n{said}")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return
        except OSError:  # not listening yet
            pass
        finally:
            connection.close()
        time.sleep(0.1)
    raise RuntimeError(f"finsent-serve not ready within {READY_TIMEOUT_S} s")
