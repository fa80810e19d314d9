"""What the server tells about itself: Prometheus metrics, and one JSON access-log line a request."""

import json
import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ACCESS_LOG = logging.getLogger("finsent.access")
REQUEST_ID_HEADER = "X-Request-ID"
# A client's request id is kept when short and printable ASCII: it goes into logs and a header.
CLIENT_REQUEST_ID = re.compile(r"[!-~]{1,128}")
LOGGED_PATH_CHARS = 200


class Metrics:
    """The server's metrics, in a registry of its own (not the process-wide one: one per app)."""

    def __init__(self, backend: str, version: str):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "finsent_http_requests", "HTTP requests answered", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "finsent_http_request_duration_seconds",
            "Time from a request's headers to its answer",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.batch_texts = Histogram(
            "finsent_batch_texts",
            "Texts of one model run (the requests gathered into it)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.waiting_texts = Gauge(
            "finsent_waiting_texts", "Texts waiting for a model run", registry=self.registry
        )
        Info("finsent_model", "The model served", registry=self.registry).info(
            {"backend": backend, "version": version}
        )


class AccessLog:
    """Gives each request an id (the client's X-Request-ID, else a new one), returns it as a header,
    counts and times the request by route and status, and logs it as one JSON line.

    Plain ASGI rather than Starlette's BaseHTTPMiddleware, which runs each request in a task of its own.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: frozenset[str]):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = _request_id(scope)
        status = 500  # unless a response starts: an exception escaped the app

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER.lower().encode(), request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            route = scope["path"] if scope["path"] in self.routes else "other"  # bounded label values
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(seconds)
            ACCESS_LOG.info(
                json.dumps(
                    {
                        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"][:LOGGED_PATH_CHARS],
                        "status": status,
                        "duration_ms": round(1000 * seconds, 2),
                        "client": (scope.get("client") or ("", 0))[0],
                    }
                )
            )


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER.lower().encode():
            text = value.decode("latin-1")
            if CLIENT_REQUEST_ID.fullmatch(text):
                return text
    return new_request_id()


def new_request_id() -> str:
    return uuid.uuid4().hex


def log_access_to_stdout() -> None:
    """Access-log lines, bare JSON, on stdout (uvicorn's own messages go to stderr)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    ACCESS_LOG.addHandler(handler)
    ACCESS_LOG.setLevel(logging.INFO)
    ACCESS_LOG.propagate = False


def leave_access_log_to_front() -> None:
    """No access-log lines of the API's own: nginx's log has one for every answer, its own refusals
    among them, and the API's would be a second line for the others."""
    ACCESS_LOG.disabled = True
