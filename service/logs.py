"""Logging for operators: JSON lines (or plain text for people, LEARNGENE_LOG_FORMAT=text) carrying the request
id, route, status and duration of HTTP requests, and the job id, kind and attempt of everything logged while a
job runs. The ids live in context variables, so any logger anywhere picks them up without being passed them."""
from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_job: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("job", default=None)

#: Record attributes (set with ``extra=``) that belong in the JSON line when present.
FIELDS = ("method", "route", "path", "status", "duration_ms", "bytes", "client")


@contextmanager
def job_context(job_id: str, kind: str, attempt: int) -> Iterator[None]:
    """Every line logged inside (in this thread or task) names the job."""
    token = _job.set({"job_id": job_id, "kind": kind, "attempt": attempt})
    try:
        yield
    finally:
        _job.reset(token)


class ContextFilter(logging.Filter):
    """Copies the current request and job ids onto each record (a handler filter: it sees every record that
    reaches the handler, whichever logger emitted it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        job = _job.get()
        record.job_id = job["job_id"] if job else None
        record.job_kind = job["kind"] if job else None
        record.attempt = job["attempt"] if job else None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "job_id", "job_kind", "attempt", *FIELDS):
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """One readable line; the ids in brackets only when there are some."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(ids)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ids = [f"req={record.request_id}"] if getattr(record, "request_id", None) else []
        if getattr(record, "job_id", None):
            ids.append(f"job={record.job_id} {record.job_kind} attempt={record.attempt}")
        record.ids = f" [{' '.join(ids)}]" if ids else ""
        return super().format(record)


def configure(fmt: str, level: int | str = logging.INFO) -> None:
    """Route every logger (uvicorn's and Celery's included) through one stderr handler in ``fmt``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
