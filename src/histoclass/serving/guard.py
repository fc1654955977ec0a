"""The checks made before a byte of the body is read: an unauthenticated or oversized upload costs nothing.

A pure ASGI middleware in front of the app (FastAPI resolves a route's dependencies only after it has read
the body). Keys are compared in constant time. A body that announces its size is refused here with a JSON
message naming the limit; a chunked body without ``Content-Length`` is cut off by Starlette's
``RequestBodyLimitMiddleware`` as it streams in.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

__all__ = ["API_KEY_HEADER", "API_KEY_PARAMETER", "OPEN_PATHS", "RequestGuard"]

API_KEY_HEADER = "x-api-key"
#: The docs page is opened from a browser's address bar, which sends no headers: ``/docs?api_key=...``.
API_KEY_PARAMETER = "api_key"
#: What anyone may reach: the page, its assets and the health check.
OPEN_PATHS = ("/", "/api/health", "/favicon.ico")
OPEN_PREFIXES = ("/static/",)


class RequestGuard:
    """Answers 401 to requests outside :data:`OPEN_PATHS` without the key, 413 to announced oversize bodies."""

    def __init__(self, app: Callable, api_key: str | None, max_bytes: int) -> None:
        self.app, self.api_key, self.max_bytes = app, api_key, max_bytes

    def _authorised(self, scope: dict, headers: dict[bytes, bytes]) -> bool:
        path = scope["path"]
        if not self.api_key or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return True
        given = headers.get(API_KEY_HEADER.encode(), b"")  # the header's bytes as sent: UTF-8 keys match too
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

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        refusal = self._refusal(scope) if scope["type"] == "http" else None
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, detail = refusal
        body = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
