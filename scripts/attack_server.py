"""Attack a finsent-serve on loopback and print what it withstood.

Header flood: `--connections` connections send endless headers for `--seconds`, each reconnecting once
closed, while /healthz is asked every 50 ms: /healthz's slowest answer, how long a flooding connection
lasted, the server's memory growth and the bytes it read. 413: a body declared as 1 GB, then a chunked
one, each sent until the server closes: the bytes the server read past its body limit.

    PYTHONPATH=src python scripts/attack_server.py                  # a finsent-serve of its own, here
    PYTHONPATH=src python scripts/attack_server.py --url http://127.0.0.1:8000 --pid 1234

The server's byte count is its finsent_http_received_bytes_total; its memory, /proc/PID/status (Linux).
"""

import argparse
import http.client
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

FLOOD_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Flood: "
BODY_HEAD = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
CHUNK = 65536
MIB = 2**20


def get(host: str, port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def received_bytes(host: str, port: int) -> float:
    metrics = get(host, port, "/metrics")[1].decode()
    return float(re.search(r"^finsent_http_received_bytes_total (\S+)$", metrics, re.MULTILINE)[1])


def resident_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)[1]) / 1024


def send_until_closed(host: str, port: int, head: bytes, chunk: bytes, seconds: float) -> tuple[float, bytes]:
    """Open a connection, send `head`, then `chunk` again and again until the server closes it (or
    `seconds` pass): the seconds it lasted and the server's answer."""
    with socket.create_connection((host, port), timeout=seconds) as connection:
        start = time.monotonic()
        try:
            connection.sendall(head)
            while time.monotonic() - start < seconds:
                connection.sendall(chunk)
        except OSError:  # closed by the server
            pass
        lasted, answer = time.monotonic() - start, b""
        try:
            while data := connection.recv(CHUNK):
                answer += data
        except OSError:  # reset: what the server sent before still arrived
            pass
    return lasted, answer


def header_flood(host: str, port: int, pid: int | None, connections: int, seconds: float) -> None:
    read, memory = received_bytes(host, port), [resident_mib(pid)] if pid else []
    end, lasted, statuses, latencies, failures = time.monotonic() + seconds, [], set(), [], 0

    def flood() -> None:
        while time.monotonic() < end:
            took, answer = send_until_closed(host, port, FLOOD_HEAD, b"a" * CHUNK, seconds)
            lasted.append(took)
            statuses.add(answer[9:12].decode() or "none")

    floods = [threading.Thread(target=flood) for _ in range(connections)]
    for thread in floods:
        thread.start()
    while time.monotonic() < end:
        start = time.monotonic()
        try:
            failures += get(host, port, "/healthz")[0] != 200
        except OSError:
            failures += 1
        latencies.append(time.monotonic() - start)
        memory += [resident_mib(pid)] if pid else []
        time.sleep(0.05)
    for thread in floods:
        thread.join()
    growth = f"+{max(memory) - memory[0]:.1f} MiB" if memory else "not known (no --pid)"
    print(
        f"header flood, {connections} connections for {seconds:g} s: {len(lasted)} connections, the longest "
        f"open {max(lasted):.3f} s, answers {sorted(statuses)}; /healthz slowest {max(latencies):.3f} s, "
        f"{failures} failed of {len(latencies)}; server memory {growth}; "
        f"server read {(received_bytes(host, port) - read) / MIB:.1f} MiB"
    )


def body_flood(host: str, port: int, framing: str, seconds: float) -> None:
    """A body over the limit, sent until the server closes: as declared by its Content-Length (refused
    before any of it is read), or chunked (refused once the limit has arrived)."""
    if framing == "chunked":
        head, chunk = b"Transfer-Encoding: chunked\r\n\r\n", b"%x\r\n" % CHUNK + b"x" * CHUNK + b"\r\n"
    else:
        head, chunk = b"Content-Length: 1000000000\r\n\r\n", b"x" * CHUNK
    read = received_bytes(host, port)
    lasted, answer = send_until_closed(host, port, BODY_HEAD + head, chunk, seconds)
    read = received_bytes(host, port) - read
    limit = re.search(rb"body over (\d+) bytes", answer)
    before_413 = int(limit[1]) if limit and framing == "chunked" else 0
    past_limit = read - len(BODY_HEAD + head) - before_413
    print(
        f"413, {framing}: answer {answer[9:12].decode() or 'none'}, connection closed after {lasted:.3f} s; "
        f"server read {read / MIB:.2f} MiB, {past_limit / MIB:.2f} MiB past the body limit"
    )


def started_server() -> tuple[subprocess.Popen, int]:
    """finsent-serve, started in the working directory on a free loopback port, once ready."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "finsent.inference.api.server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if get("127.0.0.1", port, "/readyz")[0] == 200:
                return server, port
        except OSError:
            pass
        if server.poll() is not None:
            raise SystemExit(f"finsent-serve exited with status {server.returncode}")
        time.sleep(0.1)
    server.terminate()
    raise SystemExit("finsent-serve not ready within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running server on loopback; default: start one here")
    parser.add_argument("--pid", type=int, help="the running server's process, for its memory")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10, help="the flood's length, and each send's limit")
    args = parser.parse_args()
    server = None
    if args.url:
        url = urlsplit(args.url)
        if url.hostname not in {"127.0.0.1", "localhost", "::1"}:
            parser.error("--url: loopback only")
        host, port, pid = url.hostname, url.port or 80, args.pid
    else:
        server, port = started_server()
        host, pid = "127.0.0.1", server.pid
    try:
        header_flood(host, port, pid, args.connections, args.seconds)
        for framing in ("content-length", "chunked"):
            body_flood(host, port, framing, args.seconds)
    finally:
        if server is not None:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
