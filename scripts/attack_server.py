"""Attack a finsent-serve on loopback and print what it withstood.

Header flood: `--connections` connections send endless headers for `--seconds`, each reconnecting once
closed, while /healthz is asked every 50 ms: /healthz's slowest answer, how long a flooding connection
lasted, the server's memory growth (its processes, nginx's among them) and the most bytes a flooding
connection got into the server. 413: a body declared as 1 GB, then a chunked one, each sent until the
server closes: the bytes the client got in past the body limit.

    PYTHONPATH=src:. python scripts/attack_server.py                 # finsent-serve --front nginx, here
    PYTHONPATH=src:. python scripts/attack_server.py --front none    # the API alone
    PYTHONPATH=src:. python scripts/attack_server.py --url http://127.0.0.1:8000 --pid 1234

Bytes are counted by the client, with a small socket send buffer (tests/support/counters.py): what a
connection got in is the most the server can have read from it. Memory: /proc/PID/status (Linux), for
PID and its descendants.
"""

import argparse
import http.client
import re
import threading
import time
from urllib.parse import urlsplit

from tests.support.counters import connect, read_until_closed, resident_mib, send_until_closed
from tests.support.server import running_server

FLOOD_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Flood: "
BODY_HEAD = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
CHUNK = 65536
MIB = 2**20


def get(host: str, port: int, path: str) -> int:
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def header_flood(host: str, port: int, pid: int | None, connections: int, seconds: float) -> None:
    memory = [resident_mib(pid)] if pid else []
    end, floods, statuses, latencies, failures = time.monotonic() + seconds, [], set(), [], 0

    def flood() -> None:
        while time.monotonic() < end:
            connection = connect(host, port, FLOOD_HEAD, timeout=seconds)
            floods.append(send_until_closed(connection, b"a" * CHUNK, seconds))
            statuses.add(read_until_closed(connection)[9:12].decode() or "none")

    threads = [threading.Thread(target=flood) for _ in range(connections)]
    for thread in threads:
        thread.start()
    while time.monotonic() < end:
        start = time.monotonic()
        try:
            failures += get(host, port, "/healthz") != 200
        except OSError:
            failures += 1
        latencies.append(time.monotonic() - start)
        memory += [resident_mib(pid)] if pid else []
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    growth = f"+{max(memory) - memory[0]:.1f} MiB" if memory else "not known (no --pid)"
    print(
        f"header flood, {connections} connections for {seconds:g} s: {len(floods)} connections, the longest "
        f"open {max(lasted for lasted, _ in floods):.3f} s, answers {sorted(statuses)}; /healthz slowest "
        f"{max(latencies):.3f} s, {failures} failed of {len(latencies)}; server memory {growth}; "
        f"the most one connection got in {max(sent for _, sent in floods) / 1024:.0f} KiB"
    )


def body_flood(host: str, port: int, framing: str, seconds: float) -> None:
    """A body over the limit, sent until the server closes: as declared by its Content-Length (refused
    before any of it is read), or chunked (refused once the limit has arrived)."""
    if framing == "chunked":
        head, chunk = b"Transfer-Encoding: chunked\r\n\r\n", b"%x\r\n" % CHUNK + b"x" * CHUNK + b"\r\n"
    else:
        head, chunk = b"Content-Length: 1000000000\r\n\r\n", b"x" * CHUNK
    connection = connect(host, port, BODY_HEAD + head, timeout=seconds)
    lasted, sent = send_until_closed(connection, chunk, seconds)
    answer = read_until_closed(connection)
    limit = re.search(rb"body over (\d+) bytes", answer)
    past_limit = sent - (int(limit[1]) + len(chunk) if limit and framing == "chunked" else 0)
    print(
        f"413, {framing}: answer {answer[9:12].decode() or 'none'}, connection closed after {lasted:.3f} s; "
        f"the client got in {sent / MIB:.2f} MiB, {max(past_limit, 0) / MIB:.2f} MiB past the body limit"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running server on loopback; default: start one here")
    parser.add_argument("--pid", type=int, help="the running server's process, for its memory")
    parser.add_argument(
        "--front", choices=("nginx", "none"), default="nginx", help="for the server it starts"
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10, help="the flood's length, and each send's limit")
    args = parser.parse_args()
    if args.url:
        url = urlsplit(args.url)
        if url.hostname not in {"127.0.0.1", "localhost", "::1"}:
            parser.error("--url: loopback only")
        attack(url.hostname, url.port or 80, args.pid, args)
        return
    with running_server(args.front) as server:
        attack("127.0.0.1", server.port, server.process.pid, args)


def attack(host: str, port: int, pid: int | None, args: argparse.Namespace) -> None:
    header_flood(host, port, pid, args.connections, args.seconds)
    for framing in ("content-length", "chunked"):
        body_flood(host, port, framing, args.seconds)


if __name__ == "__main__":
    main()
