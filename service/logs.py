"""Logging for operators: JSON lines (or plain text for people, LEARNGENE_LOG_FORMAT=text) carrying the request
id, route, status and duration of HTTP requests, and the job id, kind and attempt of everything logged while a
job runs. The ids live in context variables, so any logger anywhere picks them up without being passed them."""
from __future__ import annotations

import contextvars
import copy
import datetime as dt
import json
import logging
import re
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
    """One JSON object per line: ``json.dumps`` escapes every control character (and, ASCII only, the Unicode
    line separators), so no value can break the line."""

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


#: What could end a log line or fake a new one on a terminal: C0 and C1 controls, DEL, the Unicode line and
#: paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """``text`` on one line: each control character written as its escape (``\\n``, ``\\x1b``, ``\\u2028``)."""
    return _CONTROL.sub(lambda m: _NAMED.get(m[0]) or (f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100
                                                       else f"\\u{ord(m[0]):04x}"), text)


class TextFormatter(logging.Formatter):
    """One readable line per record, whatever its message holds (a request path may carry ``%0d%0a``): control
    characters are escaped; a traceback follows on lines of its own, indented, so none of its lines can pass for
    a record. The ids are in brackets, only when there are some."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(ids)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ids = [f"req={record.request_id}"] if getattr(record, "request_id", None) else []
        if getattr(record, "job_id", None):
            ids.append(f"job={record.job_id} {record.job_kind} attempt={record.attempt}")
        record.ids = f" [{' '.join(ids)}]" if ids else ""
        return super().format(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        safe = copy.copy(record)
        safe.message = escape_controls(record.message)
        return super().formatMessage(safe)

    def formatException(self, ei: Any) -> str:
        return "\n".join(f"    {escape_controls(line)}" for line in super().formatException(ei).splitlines())

    def formatStack(self, stack_info: str) -> str:
        return "\n".join(f"    {escape_controls(line)}" for line in stack_info.splitlines())


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
