"""Plain ASGI middleware: the request body size limit (413 in OpenAI's error shape)."""
from __future__ import annotations

import json

from zhgpt.apps.serve.errors import ApiError


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes before they are read (plain ASGI, so streaming responses and
    disconnect detection pass through untouched, unlike Starlette's BaseHTTPMiddleware)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            e = ApiError(413, f"request body over {self.limit >> 20} MiB", code="body_too_large")
            body = json.dumps(e.body()).encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        seen = 0

        async def counted():
            # A chunked upload has no content-length: count what arrives (FastAPI answers 400 when this raises).
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise ApiError(413, f"request body over {self.limit >> 20} MiB", code="body_too_large")
            return message

        await self.app(scope, counted, send)
