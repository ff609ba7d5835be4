"""Job handlers by job kind. Each takes a JobContext and returns the job's JSON result."""
from __future__ import annotations

from worker.runner import Handler

HANDLERS: dict[str, Handler] = {}
