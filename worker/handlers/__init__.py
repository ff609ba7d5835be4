"""Job handlers by job kind. Each takes a JobContext and returns the job's JSON result."""
from __future__ import annotations

from service.condensing.service import CONDENSE_JOB
from service.descendants.service import EXPAND_JOB
from worker.handlers import condense, expand
from worker.runner import Handler

HANDLERS: dict[str, Handler] = {EXPAND_JOB: expand.run, CONDENSE_JOB: condense.run}
