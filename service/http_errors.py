"""The HTTP side of the error hierarchy (``service/errors.py``): every error, ours or FastAPI's, Starlette's and the
database's, answers in one JSON shape, mapped here and nowhere else, and documented on each operation."""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import exc as sa_exc
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.errors import ErrorDetail, ServiceError, TooManyRequests, Unavailable

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] = []


class ErrorResponse(BaseModel):
    """Every error the API returns has this shape."""

    error: ErrorBody


def retry_after_header(seconds: float) -> dict[str, str]:
    # Retry-After takes whole seconds; rounding up so that a client that waits exactly that long gets through.
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


#: Seconds a client should wait before retrying a 503.
RETRY_AFTER_S = 5

#: SQLAlchemy's errors for a database that cannot be reached or dropped the connection (also a pool with no
#: connection to give): the request was fine, the database is not, so 503 rather than 500. The pool checks each
#: connection before use, so requests succeed again as soon as the database is back.
DATABASE_DOWN = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, sa_exc.DisconnectionError)


#: For OpenAPI: ``responses=error_responses(404, 422)`` documents the shape on each operation.
DESCRIPTIONS = {
    400: "Bad request",
    401: "Missing or wrong bearer token",
    403: "The key lacks the scope, or the resource belongs to another owner",
    404: "Not found",
    409: "Conflict",
    410: "Deleted (the message says who deleted it, when, and its sha256)",
    411: "Uploads must declare their Content-Length",
    413: "Payload too large",
    416: "The byte range starts past the end of the file (Content-Range says its size)",
    429: "Rate limit or quota spent (see Retry-After)",
    500: "The job behind the request failed (not the client's fault)",
    422: "Invalid request (the field is named in details)",
    503: "A dependency is unavailable",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": DESCRIPTIONS[code]} for code in codes}


def error_response(status: int, code: str, message: str, details: list[ErrorDetail] | None = None) -> JSONResponse:
    """An error in the one JSON shape (also for a route that answers one without raising)."""
    payload = ErrorResponse(error=ErrorBody(code=code, message=message, details=details or []))
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse(status_code=status, content=payload.model_dump(), headers=headers)


def _loc_to_field(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 401: "unauthorized",
               413: "payload_too_large"}


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str | None:
    """Every method a route serves at the request's path. Starlette's own 405 names only the first route that
    matched the path, so a path served by a GET route and a POST route answered OPTIONS with ``allow: POST``. None
    for a path no route serves."""
    routes = request.app.router.routes
    methods = [method for method in _METHODS
               if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)]
    return ", ".join(sorted(methods)) or None


def _server_paths(request: Request) -> Callable[[str], str]:
    """What replaces this server's own folders (data, artifacts, cache) in a message: a library's error about a
    stored file names its absolute path, which is nobody's business but the operator's."""
    settings = request.app.state.ctx.settings
    roots = sorted({str(p) for p in (settings.data_dir.resolve(), settings.artifact_root, settings.resolved_cache_dir)},
                   key=len, reverse=True)

    def hide(message: str) -> str:
        for root in roots:
            message = message.replace(root, "<server>")
        return message

    return hide


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        hide = _server_paths(request)
        details = [ErrorDetail(field=d.field, message=hide(d.message)) for d in exc.details]
        response = error_response(exc.status_code, exc.code, hide(exc.message), details)
        if isinstance(exc, TooManyRequests):
            response.headers.update(retry_after_header(exc.retry_after))
        return response

    @app.exception_handler(DataError)
    async def _out_of_range(_: Request, exc: DataError) -> JSONResponse:
        # The last line of defence: inputs are bounded before they reach the database (ids < 2^31, names by
        # pattern), but a value the database still refuses is the client's, not a server error.
        log.warning("database refused a value: %s", exc.orig)
        return error_response(422, "invalid_request", "a value is outside what the registry can store")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [ErrorDetail(field=_loc_to_field(e.get("loc", ())), message=e.get("msg", "")) for e in exc.errors()]
        fields = ", ".join(d.field or "?" for d in details)
        return error_response(422, "validation_error", f"invalid request: {fields}", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        response = error_response(exc.status_code, code, str(exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        if exc.status_code == 405 and (allowed := _allowed_methods(request)):
            response.headers["allow"] = allowed
        return response

    async def _database_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s: %s", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return error_response(503, Unavailable.code, "the database is unavailable; try again shortly")

    for error in DATABASE_DOWN:
        app.add_exception_handler(error, _database_down)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "internal server error")
