"""nginx in front of the API (`front: nginx`): the limits that uvicorn has no setting for.

uvicorn has no deadline for a request's headers (encode/uvicorn#157: a client that sends a byte at a
time holds a connection for ever), no bound on their size with its httptools parser, answers its own
refusals in plain text and logs none of them, runs requests pipelined before unreadable bytes but
answers only its 400 (with a traceback), and takes HTTP/1.1 without a Host. nginx has each as a documented
directive (nginx.conf beside this module): it listens on the settings' host and port, answers its
refusals as the API answers its own (JSON, X-Request-ID, one access-log line each), and passes the
rest to the API on a Unix socket in a private folder. docs/serving.md compares it with Hypercorn and
Granian.
"""

import contextlib
import grp
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from string import Template

from finsent.errors import FinsentError
from finsent.inference.api.settings import ServeSettings

API_KEEP_ALIVE_S = 60
"""How long the API keeps an idle connection of nginx's open: above nginx's own idle time for them, so
that nginx never sends a request on a connection the API is closing."""
NGINX_IDLE_S = 30
"""How long nginx keeps an idle connection to the API for the next request."""
START_TIMEOUT_S = 10
STOP_TIMEOUT_S = 5
"""nginx's wait for its workers once the API has exited: their worker_shutdown_timeout, and margin."""
NGINX_PATHS = ("/usr/sbin", "/sbin")
"""Where Debian's package puts nginx, which is not on the PATH of users but root."""


class _Config(Template):
    delimiter = "%"  # nginx's own syntax uses $ and {}


def nginx_config(settings: ServeSettings, folder: Path, api_socket: Path) -> str:
    """nginx.conf for `settings`, with its pid and temporary files in `folder`, passing requests to the
    API on `api_socket`."""
    # set_real_ip_from takes addresses and networks as uvicorn's forwarded_allow_ips does; "*" is all.
    proxies = [address.strip() for address in settings.forwarded_allow_ips.split(",") if address.strip()]
    proxies = [
        network
        for address in proxies
        for network in (("0.0.0.0/0", "::/0") if address == "*" else (address,))
    ]
    real_ip = "".join(f"    set_real_ip_from {address};\n" for address in proxies)
    if real_ip:
        real_ip += "    real_ip_header X-Forwarded-For;\n    real_ip_recursive on;\n"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    worker_connections = 4 * settings.max_connections
    template = (files("finsent.inference.api") / "nginx.conf").read_text(encoding="utf-8")
    return _Config(template).substitute(
        user=_unprivileged_user(),
        folder=folder,
        open_files=2 * worker_connections,
        worker_connections=worker_connections,
        request_timeout=f"{round(1000 * settings.request_timeout_s)}ms",
        body_read_timeout=f"{round(2000 * settings.request_timeout_s)}ms",
        request_timeout_s=f"{settings.request_timeout_s:g}",
        max_header_bytes=settings.max_header_bytes,
        max_body_bytes=settings.max_body_bytes,
        real_ip=real_ip,
        api_socket=api_socket,
        upstream_idle=f"{NGINX_IDLE_S}s",
        listen=f"{host}:{settings.port}",
        max_connections=settings.max_connections,
    )


def _unprivileged_user() -> str:
    """nginx's `user` line: started by root, its workers (which read clients' bytes) run as nobody;
    otherwise they run as the user who started it, and the line would only get a warning."""
    if os.geteuid() != 0:
        return ""
    nobody = pwd.getpwnam("nobody")
    return f"user {nobody.pw_name} {grp.getgrgid(nobody.pw_gid).gr_name};"


def nginx_executable() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path=os.pathsep.join(NGINX_PATHS))
    if found is None:
        raise FinsentError(
            "serve setting front: nginx is not installed (Debian: apt-get install nginx); "
            "front none runs the API alone"
        )
    return found


@contextmanager
def nginx_front(settings: ServeSettings) -> Iterator[Path]:
    """nginx listening on the settings' host and port, once it listens: yields the Unix socket the API
    must listen on. Leaving the block (the API has drained and stopped) stops nginx gracefully.

    nginx runs in a session of its own, so that a Ctrl-C reaches this process alone and the API drains
    before nginx stops; it gets SIGTERM if this process dies without stopping it (setpriv's
    --pdeathsig), so that it never outlives the API. If nginx exits on its own, this process gets
    SIGTERM (the API drains and stops) and exits with an error.
    """
    nginx = nginx_executable()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise FinsentError("serve setting front: nginx needs setpriv (Debian: util-linux)")
    with tempfile.TemporaryDirectory(prefix="finsent-front-") as name:
        folder = Path(name)
        if os.geteuid() == 0:
            folder.chmod(0o711)  # nginx's workers, as nobody, reach the socket by its name alone
        config, api_socket = folder / "nginx.conf", folder / "api.sock"
        config.write_text(nginx_config(settings, folder, api_socket), encoding="utf-8")
        command = [nginx, "-e", "stderr", "-p", str(folder), "-c", str(config), "-g", "daemon off;"]
        # nginx opens its access log by name, and /dev/stdout cannot be opened again by another user than
        # its owner's (a container's stdout, as the image's user) nor at all when it is a socket (systemd):
        # it gets a pipe of this process's own, which cat copies to this process's stdout.
        relay = subprocess.Popen(["cat"], stdin=subprocess.PIPE, start_new_session=True)
        with relay.stdin:
            process = subprocess.Popen(
                [setpriv, "--pdeathsig", "TERM", "--", *command], stdout=relay.stdin, start_new_session=True
            )
        stopping = threading.Event()
        try:
            _wait_until_listening(process, folder / "nginx.pid")
            threading.Thread(target=_stop_with, args=(process, stopping), daemon=True).start()
            yield api_socket
        except SystemExit:
            if process.poll() is not None and not stopping.is_set():
                raise FinsentError(f"front: nginx {_ended(process.returncode)}") from None
            raise
        finally:
            stopping.set()
            _stop(process)
            relay.wait()


def _wait_until_listening(process: subprocess.Popen, pid_file: Path) -> None:
    """Return once nginx has opened its sockets (it writes its pid file after); stop if it exits first
    (its own message, such as a port in use, is on stderr)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not pid_file.exists():
        if process.poll() is not None:
            raise FinsentError(f"front: nginx {_ended(process.returncode)} (its message above)")
        if time.monotonic() > deadline:
            raise FinsentError(f"front: nginx not listening within {START_TIMEOUT_S} s")
        time.sleep(0.01)


def _ended(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


def _stop_with(process: subprocess.Popen, stopping: threading.Event) -> None:
    """SIGTERM to this process (the API drains and stops) if nginx exits before it is stopped."""
    process.wait()
    if not stopping.is_set():
        os.kill(os.getpid(), signal.SIGTERM)


def _stop(process: subprocess.Popen) -> None:
    """nginx's graceful stop (SIGQUIT: it sends the answers under way, then exits); a kill if it
    takes longer than its workers' shutdown timeout. Then any worker left by a master that was killed
    (workers outlive it) is killed too: they are all in the master's process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGQUIT)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    with contextlib.suppress(ProcessLookupError):  # no process left in the group
        os.killpg(process.pid, signal.SIGKILL)
