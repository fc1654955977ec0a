"""The checks made before a byte of the body is read: an unauthenticated or oversized upload costs nothing.

A pure ASGI middleware in front of the app (FastAPI resolves a route's dependencies only after it has read
the body). Keys are compared in constant time. A body that announces its size is refused here with a JSON
message naming the limit; a chunked body without ``Content-Length`` is cut off by Starlette's
``RequestBodyLimitMiddleware`` as it streams in.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

__all__ = ["API_KEY_HEADER", "API_KEY_PARAMETER", "OPEN_PATHS", "RequestGuard"]

API_KEY_HEADER = "x-api-key"
#: The docs page is opened from a browser's address bar, which sends no headers: ``/docs?api_key=...``.
API_KEY_PARAMETER = "api_key"
#: What anyone may reach: the pages, their assets and the health check.
OPEN_PATHS = ("/", "/slides", "/api/health", "/favicon.ico")
OPEN_PREFIXES = ("/static/",)


class RequestGuard:
    """Answers 401 to requests outside :data:`OPEN_PATHS` without the key, 413 to announced oversize
    bodies, 408 to a client that stops sending its body for ``body_timeout`` seconds."""

    def __init__(
        self, app: Callable, api_key: str | None, max_bytes: int, body_timeout: float = 30.0
    ) -> None:
        self.app, self.api_key, self.max_bytes, self.body_timeout = (
            app,
            api_key,
            max_bytes,
            body_timeout,
        )

    def _authorised(self, scope: dict, headers: dict[bytes, bytes]) -> bool:
        path = scope["path"]
        if not self.api_key or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return True
        # the header's bytes as sent: UTF-8 keys match too
        given = headers.get(API_KEY_HEADER.encode(), b"")
        if not given:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = query.get(API_KEY_PARAMETER, [""])[0].encode("utf-8", "replace")
        return hmac.compare_digest(given, self.api_key.encode("utf-8"))

    def _refusal(self, scope: dict) -> tuple[int, str] | None:
        headers = dict(scope.get("headers") or [])
        if not self._authorised(scope, headers):
            return 401, "missing or wrong X-API-Key header"
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > self.max_bytes:
            return 413, (
                f"request is {int(length) / 1e6:.1f} MB; the limit is {self.max_bytes / 1e6:.0f} MB "
                "(raise it with --max-request-mb, or send fewer files a request)"
            )
        return None

    async def __call__(
        self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable
    ) -> None:
        refusal = self._refusal(scope) if scope["type"] == "http" else None
        if refusal is not None:
            await _answer(send, *refusal)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        timer = _BodyTimer(receive, self.body_timeout)

        async def answered(message: dict) -> None:
            """The app's answer, or 408 in its place when the body timed out (FastAPI turns it into a 400)."""
            if timer.expired and message["type"] == "http.response.start":
                timer.replaced = True
                await _answer(
                    send,
                    408,
                    f"no request body for {self.body_timeout:g} s; send the whole request",
                )
            elif not timer.replaced:
                await send(message)

        try:
            await self.app(scope, timer.receive, answered)
        except _SlowBody:
            if not timer.replaced:
                await answered({"type": "http.response.start"})


class _BodyTimer:
    """``receive`` that gives up on a body part not arriving within ``seconds``; once the body is whole, it
    waits as long as the app wants (for a disconnect, say)."""

    def __init__(self, receive: Callable[[], Awaitable[dict]], seconds: float) -> None:
        self._receive, self.seconds = receive, seconds
        self.whole = self.expired = self.replaced = False

    async def receive(self) -> dict:
        if self.whole:
            return await self._receive()
        try:
            message = await asyncio.wait_for(self._receive(), self.seconds)
        except TimeoutError:
            self.expired = True
            raise _SlowBody from None
        self.whole = message["type"] != "http.request" or not message.get("more_body", False)
        return message


class _SlowBody(Exception):
    """A client stopped sending its request body."""


async def _answer(send: Callable, status: int, detail: str) -> None:
    """The app's JSON refusal shape (``{"detail", "errors"}``), before the app has said anything."""
    error = {"filename": "(request)", "status": status, "error": detail}
    body = json.dumps({"detail": detail, "errors": [error]}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
