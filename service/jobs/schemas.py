from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.jobs.states import JobState


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    queue: str
    state: JobState
    progress: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None = Field(description="Why it failed, for people (tracebacks stay in the server log)")
    error_code: str | None = Field(
        description="Why it failed, for programs: job_error, worker_lost, recording_failed or unknown_kind")
    attempts: int
    max_attempts: int
    cancel_requested: bool
    worker: str | None
    owner: str | None = None
    created_at: dt.datetime
    started_at: dt.datetime | None
    heartbeat_at: dt.datetime | None
    finished_at: dt.datetime | None
