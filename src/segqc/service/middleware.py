"""ASGI middleware of the HTTP service: request ids, the optional API key, and body-read timeouts.

Each is a plain ASGI wrapper (no Starlette ``BaseHTTPMiddleware``), so none of them reads or buffers a
request body it does not need.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from segqc.errors import SegQCError

#: Default longest pause between two pieces of a request body (seconds).
DEFAULT_READ_TIMEOUT_S = 15.0
#: Default longest time to receive a whole request body (seconds): 20 MiB at 1.4 Mbit/s.
DEFAULT_UPLOAD_TIMEOUT_S = 120.0
#: Environment variable holding the API key (``--api-key-file`` takes precedence).
API_KEY_ENV = "SEGQC_API_KEY"
#: Routes open without the API key: liveness probes carry no credentials.
OPEN_PATHS = frozenset({"/healthz"})


class RequestContextMiddleware:
    """Give every request a fresh uuid4 (``scope["state"]["request_id"]``, answered in ``X-Request-ID``)
    and its start time (``scope["state"]["started"]``, ``time.perf_counter``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = str(uuid.uuid4())
        scope.setdefault("state", {}).update(request_id=request_id, started=time.perf_counter())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)


def read_api_key(path: str | Path | None = None) -> str | None:
    """The API key from ``path`` (surrounding whitespace stripped), else from ``$SEGQC_API_KEY``, else None.

    Raises:
        SegQCError: the file cannot be read, or the file or the variable is empty (a server that was
            meant to be protected must not start open).
    """
    if path is not None:
        try:
            key = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise SegQCError(f"{path}: cannot read the API key file ({type(err).__name__}: {err})") from None
        if not key:
            raise SegQCError(f"{path}: the API key file is empty; write the key into it, or drop the option")
        return key
    value = os.environ.get(API_KEY_ENV)
    if value is None:
        return None
    if not value.strip():
        raise SegQCError(f"{API_KEY_ENV} is set but empty; set it to the key, or unset it")
    return value.strip()


class ApiKeyMiddleware:
    """Every route except :data:`OPEN_PATHS` needs ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``,
    else 401 (before any of the body is read). Keys are compared in constant time."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        if not api_key:
            raise SegQCError("the API key is empty")
        self.app = app
        self._key = api_key.encode()

    def _authorized(self, scope: Scope) -> bool:
        offered = []
        for name, value in scope.get("headers", ()):
            if name == b"x-api-key":
                offered.append(value.strip())
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                offered.append(value[7:].strip())
        # Compare every offered key (no early exit), each in constant time.
        return any([hmac.compare_digest(key, self._key) for key in offered])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {"detail": "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


async def run_or_answer(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    guarded_receive: Receive,
    error: type[Exception],
    answer: Callable[[Any], ASGIApp],
) -> None:
    """Run ``app`` on ``guarded_receive`` (a receive channel that raises ``error``); when it raises before
    the response has started, send ``answer(err)`` instead. After the start the error propagates: a
    response half sent cannot be replaced."""
    started = False

    async def tracked_send(message: Message) -> None:
        nonlocal started
        started = started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, guarded_receive, tracked_send)
    except error as err:
        if started:
            raise
        await answer(err)(scope, receive, send)


class BodyTimeoutMiddleware:
    """Answer 408 (and close the connection) when a request body stalls: no new bytes for
    ``read_timeout`` seconds, or the whole body not in after ``upload_timeout`` seconds. Uvicorn has no
    body-read timeout of its own: without this, a client that stops sending holds its connection (and
    a worker's attention) for ever."""

    def __init__(self, app: ASGIApp, read_timeout: float, upload_timeout: float) -> None:
        self.app = app
        self.read_timeout = read_timeout
        self.upload_timeout = upload_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.upload_timeout
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:  # after the body: waits for a disconnect, not timed
                return await receive()
            left = min(self.read_timeout, deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.0))
            except (asyncio.TimeoutError, TimeoutError):
                raise _BodyTimeout(self._why(deadline)) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await run_or_answer(
            self.app, scope, receive, send, timed_receive, _BodyTimeout,
            lambda err: JSONResponse({"detail": err.detail}, 408, headers=err.headers),
        )  # fmt: skip

    def _why(self, deadline: float) -> str:
        if time.monotonic() >= deadline - 0.01:
            return f"the request body did not arrive within {self.upload_timeout:g} s"
        return f"the request body stalled: no data for {self.read_timeout:g} s"


class _BodyTimeout(HTTPException):
    # An HTTPException, so that FastAPI's form parsing passes it on (it turns other errors into 400).
    def __init__(self, detail: str) -> None:
        super().__init__(408, detail, headers={"Connection": "close"})
