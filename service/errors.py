"""One error hierarchy, one JSON shape for every 4xx/5xx, mapped to HTTP in one place."""
from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    field: str | None = None
    message: str


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] = []


class ErrorResponse(BaseModel):
    """Every error the API returns has this shape."""

    error: ErrorBody


class ServiceError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, details: list[ErrorDetail] | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or ([ErrorDetail(field=field, message=message)] if field else [])


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class NotPermitted(ServiceError):
    status_code = 401
    code = "unauthorized"


class AlreadyExists(ServiceError):
    status_code = 409
    code = "already_exists"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class InvalidRequest(ServiceError):
    """Well-formed but unacceptable (a spec that cannot be built, a budget nothing fits...)."""

    status_code = 422
    code = "invalid_request"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class JobFailedError(ServiceError):
    """The work behind a request failed on our side (the request itself was valid)."""

    status_code = 500
    code = "job_failed"


class Unavailable(ServiceError):
    status_code = 503
    code = "unavailable"


#: For OpenAPI: ``responses=error_responses(404, 422)`` documents the shape on each operation.
_DESCRIPTIONS = {
    400: "Bad request",
    401: "Missing or wrong bearer token",
    404: "Not found",
    409: "Conflict",
    413: "Payload too large",
    500: "The job behind the request failed (not the client's fault)",
    422: "Invalid request (the field is named in details)",
    503: "A dependency is unavailable",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": _DESCRIPTIONS[code]} for code in codes}


def _body(status: int, code: str, message: str, details: list[ErrorDetail] | None = None) -> JSONResponse:
    payload = ErrorResponse(error=ErrorBody(code=code, message=message, details=details or []))
    return JSONResponse(status_code=status, content=payload.model_dump())


def _loc_to_field(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 413: "payload_too_large"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return _body(exc.status_code, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [ErrorDetail(field=_loc_to_field(e.get("loc", ())), message=e.get("msg", "")) for e in exc.errors()]
        fields = ", ".join(d.field or "?" for d in details)
        return _body(422, "validation_error", f"invalid request: {fields}", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        response = _body(exc.status_code, code, str(exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return _body(500, "internal_error", "internal server error")
