"""What a server costs under attack, measured from outside it: the bytes a client got into a connection
(the most the server can have read) and the memory of the server's processes."""

import socket
import time
from pathlib import Path

SEND_BUFFER_BYTES = 16384
"""The client's socket send buffer (the kernel doubles it): small, so that what `send_until_closed`
counts is close to what the server read rather than what waits in the client's own buffer."""


def connect(host: str, port: int, first_bytes: bytes = b"", timeout: float = 10) -> socket.socket:
    """A connection with a small send buffer (see SEND_BUFFER_BYTES), `first_bytes` sent."""
    connection = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    connection.settimeout(timeout)
    connection.connect((host, port))
    connection.sendall(first_bytes)
    return connection


def send_until_closed(connection: socket.socket, chunk: bytes, seconds: float) -> tuple[float, int]:
    """Send `chunk` again and again until the server closes the connection or `seconds` pass: the
    seconds it took and the bytes the kernel took from the client, an upper bound of what the server
    read (the rest waits in the server's receive buffer and the client's small send buffer)."""
    connection.settimeout(seconds)
    start, sent = time.monotonic(), 0
    try:
        while time.monotonic() - start < seconds:
            unsent = memoryview(chunk)
            while unsent:  # whole chunks: a chunked body's framing holds
                taken = connection.send(unsent)
                sent, unsent = sent + taken, unsent[taken:]
    except OSError:  # closed by the server
        pass
    return time.monotonic() - start, sent


def read_until_closed(connection: socket.socket) -> bytes:
    """All the server sends until it closes the connection."""
    answer = b""
    try:
        while chunk := connection.recv(65536):
            answer += chunk
    except ConnectionResetError:  # closed with bytes of ours unread: what it sent before still arrives
        pass
    connection.close()
    return answer


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (nginx's master and workers under finsent-serve), from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except OSError:  # the process ended meanwhile
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, pending = [], [pid]
    while pending:
        tree.append(pending.pop())
        pending += children.get(tree[-1], [])
    return tree


def resident_mib(pid: int) -> float:
    """The resident memory of `pid` and its descendants, from /proc (Linux)."""
    total = 0.0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        total += next(
            (int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0.0
        )
    return total
