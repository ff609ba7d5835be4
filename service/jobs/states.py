"""The words of the job kernel that the rest of the service reads: a job's states and the codes of how it ended.

Imports nothing: metrics, the seed and the API's schemas read these without reaching the kernel's machinery.
"""
from __future__ import annotations

from typing import Literal

#: The values of ``jobs.state``; the last three are final.
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FinalState = Literal["succeeded", "failed", "cancelled"]
FINISHED: tuple[FinalState, ...] = ("succeeded", "failed", "cancelled")

#: Stable codes of ``jobs.error_code``: what a client may branch on (the message is for people).
ERROR_JOB = "job_error"  # the handler raised: the message is the exception's
ERROR_WORKER_LOST = "worker_lost"  # every attempt's worker died
ERROR_RECORDING = "recording_failed"  # the work was done but its result could not be recorded
ERROR_UNKNOWN_KIND = "unknown_kind"  # no process that took it knows this kind
