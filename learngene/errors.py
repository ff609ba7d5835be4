"""Typed errors: every API error body ``{"error": {"code", "message", "details": [{"field", "message"}]}}``
becomes one of these, chosen by HTTP status, so callers catch ``NotFound`` instead of parsing JSON."""
from __future__ import annotations

from typing import Any


class LearngeneError(Exception):
    """Base of everything the client raises on purpose."""


class APIError(LearngeneError):
    """The service answered with an error. ``code`` and ``field`` are the API's own (``field`` is the first
    detail's, e.g. ``spec.depth``), ``details`` all of them."""

    status: int = 0

    def __init__(self, message: str, *, status: int, code: str, details: list[dict[str, Any]] | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details = details or []
        self.field: str | None = next((d.get("field") for d in self.details if d.get("field")), None)
        self.request_id = request_id

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"{self.status} {self.code}: {self.message}{where}"


class BadRequest(APIError):
    status = 400


class Unauthorized(APIError):
    """401: no token, or the wrong one (LEARNGENE_TOKEN, ``--token``, or the config file)."""

    status = 401


class Forbidden(APIError):
    status = 403


class NotFound(APIError):
    status = 404


class Conflict(APIError):
    status = 409


class PayloadTooLarge(APIError):
    status = 413


class ValidationError(APIError):
    """422: the request was understood but refused; ``field`` names what to change."""

    status = 422


class Gone(APIError):
    """410: it was deleted; the message says by whom, when, and its sha256."""

    status = 410


class RateLimited(APIError):
    """429: ``retry_after`` is the server's Retry-After in seconds (None when it gave none)."""

    status = 429

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(APIError):
    """5xx: not the caller's fault (``code`` says which: job_failed, unavailable, internal_error)."""

    status = 500


class JobFailed(LearngeneError):
    """A followed job ended failed or cancelled. ``job`` is its last state."""

    def __init__(self, job: Any) -> None:
        super().__init__(f"job {job.id} ({job.kind}) {job.state}: {job.error or 'no error recorded'}")
        self.job = job


class ChecksumMismatch(LearngeneError):
    """A downloaded file's sha256 is not the one the server announced (its ETag)."""


class ConnectionFailed(LearngeneError):
    """The server could not be reached or the connection broke (a partial download stays, to be resumed)."""


BY_STATUS: dict[int, type[APIError]] = {
    cls.status: cls
    for cls in (BadRequest, Unauthorized, Forbidden, NotFound, Conflict, Gone, PayloadTooLarge, ValidationError,
                RateLimited)
}


def error_for(status: int, body: Any, headers: Any) -> APIError:
    """The typed error for a response (``body`` is its parsed JSON, or None when it was not JSON)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code, message, details = str(error.get("code", "http_error")), str(error.get("message", "")), error.get("details")
    else:
        code, message, details = "http_error", f"HTTP {status}", None
    cls = BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    kwargs: dict[str, Any] = {"status": status, "code": code, "details": details if isinstance(details, list) else None,
                              "request_id": headers.get("x-request-id")}
    if cls is RateLimited:
        kwargs["retry_after"] = _seconds(headers.get("retry-after"))
    return cls(message, **kwargs)


def _seconds(value: str | None) -> float | None:
    """Retry-After as seconds; the HTTP-date form is rare for rate limits and is ignored."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
