"""Limits against clients that send too much, too slowly or too many at once, and JSON answers where
uvicorn's own would be plain text.

In the HTTP protocol (`LimitedHttpProtocol`, uvicorn's httptools protocol), since an ASGI middleware is
called only once a request's headers are complete:

- A time to send a request. uvicorn has none (encode/uvicorn#157): its keep-alive timer only covers
  the idle time between requests and is reset by every byte, so a client that sends nothing, or one
  byte at a time, holds a connection for ever (slowloris). A timer is armed when a connection opens
  and when a request begins, disarmed once the request is whole; when it fires the connection is
  closed (an app still reading the body then sees the client disconnect).
- A size for the request line and headers, counted as the bytes arrive: the parser buffers a URL or
  a header of any length (uvicorn's `h11_max_incomplete_event_size` is for h11 only).
- Open connections. uvicorn's `limit_concurrency` counts the asking connection among the open ones
  (one fewer is served than set) and answers in plain text; here the protocol marks the request and
  `ConnectionLimit` answers it as the API answers any error.
- Its own refusals (431, and uvicorn's 400 for a request the parser cannot read) are JSON with a
  request id, and close the connection.
"""

import asyncio
import json
import logging
from collections.abc import Callable

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from finsent.inference.api.observability import REQUEST_ID_HEADER, new_request_id

RETRY_AFTER = {"Retry-After": "1"}
OVER_CONNECTION_LIMIT = "finsent.over_connection_limit"
"""The key of `scope["extensions"]` by which the protocol marks a request over the connection limit."""
ERROR_LOG = logging.getLogger("uvicorn.error")
VALUE_MARKS = (b"[", b"{", b",", b":")
"""Every JSON value but the first, and every key, comes after one of these."""


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection that takes over `request_timeout_s` to send a
    request, refusing request lines and headers over `max_header_bytes` (431) and marking the requests
    that arrive while over `max_connections` connections are open. `on_received` is told the size of
    every read from the socket."""

    def __init__(
        self,
        *args,
        request_timeout_s: float,
        max_header_bytes: int,
        max_connections: int,
        on_received: Callable[[int], None],
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.request_timeout_s, self.max_header_bytes = request_timeout_s, max_header_bytes
        self.max_connections, self.on_received = max_connections, on_received
        self._deadline: asyncio.TimerHandle | None = None
        self._header_bytes: int | None = 0  # bytes since the headers were awaited; None: a body is read

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        self.on_received(len(data))
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        """Feed `data` to the parser, but no more of it than the headers awaited have room for: past
        `max_header_bytes`, a 431. (The bytes of a request that begins after another ends within one
        read count from the next read on.)"""
        if self._header_bytes is None:  # a body: BodyLimit and uvicorn's flow control bound it
            super().data_received(data)
            return
        room = self.max_header_bytes - self._header_bytes
        self._header_bytes += len(data)
        if len(data) <= room:
            super().data_received(data)
            return
        if room > 0:
            super().data_received(data[:room])
        if self.transport.is_closing():  # the parser refused the request
            return
        if self._header_bytes is not None and self._header_bytes > self.max_header_bytes:  # not reset
            self._refuse(431, f"request line and headers over {self.max_header_bytes} bytes")
        else:  # the headers ended within their room: the rest is a body or another request
            self._parse(data[room:])

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._header_bytes = None
        # The connections include this one; the tasks (requests being answered) not yet this request's.
        if len(self.connections) > self.max_connections or len(self.tasks) >= self.max_connections:
            self.scope.setdefault("extensions", {})[OVER_CONNECTION_LIMIT] = {}
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._header_bytes = 0
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, msg)

    def _refuse(self, status: int, detail: str) -> None:
        """Answer `status` with a JSON `detail` and close the connection: no app has seen the request."""
        body = json.dumps({"detail": detail}).encode()
        headers = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (REQUEST_ID_HEADER.lower().encode(), new_request_id().encode()),
        ]
        lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        self.transport.write(STATUS_LINE[status] + lines + b"\r\n" + body)
        self.transport.close()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.request_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()


class ConnectionLimit:
    """A 503 with Retry-After, closing the connection, for a request that `LimitedHttpProtocol` marked
    as over the connection limit."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if OVER_CONNECTION_LIMIT in scope.get("extensions", {}):
            detail = {"detail": "too many open connections, retry later"}
            response = JSONResponse(detail, status_code=503, headers=RETRY_AFTER | {"Connection": "close"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """A 413 for a body over `max_bytes`: at once when its Content-Length says so, else once that much
    has arrived, so that it is never read whole. A 413 too once the body holds over `max_values` bytes
    that open or separate JSON values (`[{,:`): parsing costs by the value, and a body of small values
    (`[0,0,...]`) within `max_bytes` would hold the event loop far longer than a valid one.

    Any answer sent before the body has arrived whole (a 413 among them) closes the connection:
    uvicorn would otherwise go on reading and discarding the rest for as long as the client sends it.
    Rather than Starlette's RequestBodyLimitMiddleware, which answers the first case in plain text:
    every error of this API is JSON with a `detail`.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, max_values: int):
        self.app, self.max_bytes, self.max_values = app, max_bytes, max_values

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        body_pending = declared not in ("", "0") or "transfer-encoding" in headers

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and body_pending:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        too_large = f"body over {self.max_bytes} bytes"
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": too_large}, status_code=413)(scope, receive, send_closing)
            return
        received = values = 0

        async def receive_limited() -> Message:
            nonlocal received, values, body_pending
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                values += sum(chunk.count(byte) for byte in VALUE_MARKS)
                body_pending = message.get("more_body", False)
            # FastAPI answers an HTTPException raised while it reads the body as any other.
            if received > self.max_bytes:
                raise HTTPException(413, too_large)
            if values > self.max_values:
                raise HTTPException(413, f"body over {self.max_values} JSON values")
            return message

        await self.app(scope, receive_limited, send_closing)


class FailureAnswers:
    """A JSON answer where uvicorn would give a plain-text 500: a 500 for an exception (logged with its
    traceback), a 503 with Retry-After for a request still running when the shutdown timeout ends."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_watched)
            return
        except Exception:
            ERROR_LOG.exception("Exception in ASGI application")
            answer = JSONResponse({"detail": "internal server error"}, status_code=500)
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running once its graceful shutdown times out, and
            # then exits without awaiting them: the client gets this answer instead of a plain 500.
            answer = JSONResponse({"detail": "shutting down, retry later"}, 503, headers=RETRY_AFTER)
        if not started:  # else uvicorn closes the connection, the answer cut short
            await answer(scope, receive, send)
