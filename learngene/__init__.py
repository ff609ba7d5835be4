"""Python client of the Learngene Service: ``from learngene import Client``.

Imports httpx only (no torch, no fastapi, nothing of the service); ``Client.load`` imports torch and timm when
it is called."""
from learngene.client import Client, __version__
from learngene.errors import (APIError, BadRequest, ChecksumMismatch, Conflict, ConnectionFailed, Forbidden,
                              Gone, JobFailed, LearngeneError, NotFound, PayloadTooLarge, RateLimited, ServerError,
                              Unauthorized, ValidationError)
from learngene.models import Ancestry, CondenseJob, Dataset, Descendant, Download, Job, Learngene, Version

__all__ = [
    "Client", "__version__",
    "APIError", "BadRequest", "ChecksumMismatch", "Conflict", "ConnectionFailed", "Forbidden", "Gone", "JobFailed",
    "LearngeneError", "NotFound", "PayloadTooLarge", "RateLimited", "ServerError", "Unauthorized", "ValidationError",
    "Ancestry", "CondenseJob", "Dataset", "Descendant", "Download", "Job", "Learngene", "Version",
]
