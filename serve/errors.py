"""The one error shape of the product's HTTP APIs, and the handlers that produce it.

Both the classification API (``serve/app.py``) and the ingestion API
(``ingestion/api.py``) answer every failure with::

    {"error": {"type": "adapter_not_found", "message": "...", "details": [...]}}

A route raises :class:`ApiError`; :func:`install_error_handlers` turns it, a schema
violation, malformed JSON, a body that is not UTF-8 and FastAPI's own 404/405 into that
shape, and counts each by its ``type`` through the caller's counter.
:class:`BodySizeLimit` answers oversized bodies (413) in it, before they are parsed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException


class ErrorBody(BaseModel):
    type: str
    message: str
    details: list[Any] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_response(status: int, kind: str, message: str, details: list[Any] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape of the APIs (``headers``: e.g. ``Allow`` on a 405)."""
    body = ErrorResponse(error=ErrorBody(type=kind, message=message, details=details))
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


class ApiError(Exception):
    """A failure a route reports: HTTP ``status``, machine-readable ``kind``, message."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def install_error_handlers(app: FastAPI, count_error: Callable[[str], None]) -> None:
    """Answer every failure of ``app`` in the one shape; ``count_error(kind)`` is
    called once per failure (the app's error counter)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        count_error(exc.kind)
        return error_response(exc.status, exc.kind, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            count_error("malformed_json")
            where = errors[0].get("loc", ("body", "?"))[-1]
            reason = (errors[0].get("ctx") or {}).get("error", "invalid JSON")
            return error_response(400, "malformed_json",
                                  f"request body is not valid JSON: {reason} at position {where}")
        count_error("invalid_request")
        details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg"))}
                   for e in errors]
        summary = "; ".join(
            f"{'.'.join(d['loc'][1:]) or 'body'}: {d['msg']}" for d in details)
        return error_response(422, "invalid_request", summary, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if isinstance(exc.__cause__, ApiError):  # raised while the body was read
            return await _api_error(request, exc.__cause__)
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            count_error("bad_encoding")
            return error_response(400, "bad_encoding",
                                  f"request body is not valid UTF-8: {exc.__cause__.reason} "
                                  f"at byte {exc.__cause__.start}")
        kind = {401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed"}.get(exc.status_code, "http_error")
        count_error(kind)
        # Starlette's 405 carries ``Allow`` (RFC 9110 requires it); keep its headers.
        return error_response(exc.status_code, kind, str(exc.detail),
                              headers=getattr(exc, "headers", None))


class BodySizeLimit:
    """ASGI middleware: reject bodies over ``max_bytes`` with 413, before parsing them."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = error_response(413, "request_too_large",
                                 f"request body exceeds {self.max_bytes} bytes")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await too_big(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise ApiError(413, "request_too_large",
                               f"request body exceeds {self.max_bytes} bytes")
            return message

        return await self.app(scope, limited_receive, send)
