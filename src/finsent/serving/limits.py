"""Limits against clients that send too much or too slowly: a body size, and a time to send a request.

The time: uvicorn has none for receiving a request (encode/uvicorn#157). Its keep-alive timer only
covers the idle time between requests and is reset by every byte, so a client that opens a connection
and sends nothing, or one byte at a time, holds it for ever (slowloris). An ASGI middleware cannot help
for the headers: the app is called only once they are complete. So the protocol itself keeps a timer,
armed when a connection opens and when a request begins, disarmed once the request is whole; when it
fires the connection is closed (an app still reading the body then sees the client disconnect).
"""

import asyncio

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class RequestDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection that takes over `request_timeout_s` to send
    a request, from its first byte (or the connection's opening) to its last."""

    def __init__(self, *args, request_timeout_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.request_timeout_s = request_timeout_s
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

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


class BodyLimit:
    """A 413 for a body over `max_bytes`: at once when its Content-Length says so, else once that much
    has arrived, so that it is never read whole.

    Rather than Starlette's RequestBodyLimitMiddleware, which answers the first case in plain text:
    every error of this API is JSON with a `detail`.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self.message}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self.message)  # FastAPI answers it as any HTTPException
            return message

        await self.app(scope, receive_limited, send)

    @property
    def message(self) -> str:
        return f"body over {self.max_bytes} bytes"
