"""Limits the API itself enforces, whether nginx is in front or not (finsent.inference.api.front), and
JSON answers where uvicorn's own would be plain text: a body's size and JSON values, the time to send
it, a failure or a shutdown while a request runs."""

import asyncio
import logging

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

RETRY_AFTER = {"Retry-After": "1"}
ERROR_LOG = logging.getLogger("uvicorn.error")
VALUE_MARKS = (b"[", b"{", b",", b":")
"""Every JSON value but the first, and every key, comes after one of these."""


class BodyLimit:
    """A 413 for a body over `max_bytes`: at once when its Content-Length says so, else once that much
    has arrived, so that it is never read whole. A 413 too once the body holds over `max_values` bytes
    that open or separate JSON values (`[{,:`): parsing costs by the value, and a body of small values
    (`[0,0,...]`) within `max_bytes` would hold the event loop far longer than a valid one. A 408 for a
    body not whole within `timeout_s` of its request's headers: neither uvicorn nor nginx bounds the
    time of a whole body (nginx only the time between two reads), so a client sending a byte at a time
    would hold its connection for ever.

    With `close_early`, any answer sent before the body has arrived whole (these among them) closes
    the connection: uvicorn would otherwise go on reading and discarding the rest for as long as the
    client sends it. Behind nginx, the connection is nginx's, which bounds the body itself and closes
    its client's connection after such an answer: closed, nginx's sending of the rest would fail, and
    its client would get a 502 instead of the answer.

    Rather than Starlette's RequestBodyLimitMiddleware, which answers the first case in plain text:
    every error of this API is JSON with a `detail`.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, max_values: int, timeout_s: float, close_early: bool):
        self.app, self.max_bytes, self.max_values, self.timeout_s = app, max_bytes, max_values, timeout_s
        self.close_early = close_early

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        body_pending = declared not in ("", "0") or "transfer-encoding" in headers

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and body_pending and self.close_early:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        too_large = f"body over {self.max_bytes} bytes"
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": too_large}, status_code=413)(scope, receive, send_closing)
            return
        received = values = 0
        deadline = asyncio.get_running_loop().time() + self.timeout_s

        async def receive_limited() -> Message:
            nonlocal received, values, body_pending
            if not body_pending:  # the body is whole: what follows is the client going away
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                # FastAPI answers an HTTPException raised while it reads the body as any other.
                raise HTTPException(408, f"request not received within {self.timeout_s:g} s") from None
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                values += sum(chunk.count(byte) for byte in VALUE_MARKS)
                body_pending = message.get("more_body", False)
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
