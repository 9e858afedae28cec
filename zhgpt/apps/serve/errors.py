"""Errors in OpenAI's shape: every error body is {"error": {"message", "type", "param", "code"}}.

FastAPI's own answers are replaced: a validation error is 400 (what OpenAI returns) instead of 422 with
FastAPI's body, an unknown path or method keeps its status but gets OpenAI's body, and a bug is a 500 that
names the exception without leaking a traceback.
"""
from __future__ import annotations

import logging

try:  # the [serve] extra; without it the module still imports (ApiError is used by the worker and the CLI)
    from starlette.responses import JSONResponse
except ImportError:  # pragma: no cover - exercised only without the extra
    JSONResponse = None

log = logging.getLogger("zhgpt.apps.serve")

# Names pydantic gives the members of a union (prompt: str | list[str] ...); an error names the field instead.
UNION_MEMBERS = ("str", "list[str]", "list[int]", "list[list[int]]")


class ApiError(Exception):
    """An error answered to the client with OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def error_response(e: ApiError):
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def api_error(request, e: ApiError):
    return error_response(e)


async def validation_error(request, e):
    """pydantic's first complaint about the body -> 400 naming the field."""
    errors = e.errors()
    first = errors[0] if errors else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if first.get("type") == "json_invalid":
        return error_response(ApiError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', '')}"
                                            .rstrip(": "), code="json_invalid"))
    param = ".".join(x for x in loc if not (x in UNION_MEMBERS or x.startswith(("function-", "list["))))
    msg = first.get("msg", "invalid request")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field (not supported by this server)"
    return error_response(ApiError(400, f"{param or 'body'}: {msg}", param=param or None,
                                   code=first.get("type", "invalid_value")))


async def http_error(request, e):
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
    msg = f"{request.method} {request.url.path}: {e.detail}"
    return error_response(ApiError(e.status_code, msg, code=code))


async def server_error(request, e: Exception):
    log.exception("unhandled error on %s", request.url.path)
    return error_response(ApiError(500, f"internal error ({type(e).__name__}); see the server log",
                                   type="server_error", code="internal_error"))


def add_error_handlers(app) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, server_error)
