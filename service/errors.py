"""One error hierarchy for every refusal and failure the service reports: the business rules raise these and
import nothing else. Each names its HTTP status and stable code; the HTTP layer (``service/http_errors.py``)
turns them into the API's one JSON shape."""
from __future__ import annotations

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    field: str | None = None
    message: str


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


class Forbidden(ServiceError):
    """The key is valid but lacks the scope, or the resource belongs to another owner."""

    status_code = 403
    code = "forbidden"


class TooManyRequests(ServiceError):
    """A rate limit or quota of the caller is spent; ``retry_after`` says when to come back (seconds)."""

    status_code = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: float, field: str | None = None):
        super().__init__(message, field=field)
        self.retry_after = retry_after


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class Gone(ServiceError):
    """It existed and was deleted: the tombstone (who, when, sha256) is in the message."""

    status_code = 410
    code = "gone"


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
    """Try again later (``Retry-After`` says when): a dependency is down, or the answer is not ready yet."""

    status_code = 503
    code = "unavailable"
