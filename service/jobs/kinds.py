"""What a job kind is: declared by its domain, run by the kernel, which imports no domain.

A domain (``service/<domain>/tasks.py``) declares each of its kinds once: the typed payload (validated when the
job is submitted, stored as JSON, parsed back for the handler), the handler, the queue, and ``on_finished``: what
happens to the domain's rows when the job ends. The kernel calls ``on_finished`` however the job ends (success,
failure, giving up on a lost worker, cancellation), in the transaction that records the end, so a domain row can
never outlive its job in a state that waits for it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel
from sqlalchemy.orm import Session

from service.models import Job

if TYPE_CHECKING:
    from service.jobs.runner import JobContext

#: The values of ``jobs.state``; the last three are final.
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FinalState = Literal["succeeded", "failed", "cancelled"]
FINISHED: tuple[FinalState, ...] = ("succeeded", "failed", "cancelled")

#: Stable codes of ``jobs.error_code``: what a client may branch on (the message is for people).
ERROR_JOB = "job_error"  # the handler raised: the message is the exception's
ERROR_WORKER_LOST = "worker_lost"  # every attempt's worker died
ERROR_RECORDING = "recording_failed"  # the work was done but its result could not be recorded
ERROR_UNKNOWN_KIND = "unknown_kind"  # no process that took it knows this kind

P = TypeVar("P", bound=BaseModel)


class JobFailed(Exception):
    """A handler's way to fail its job with a message (and a code) meant for the user."""

    def __init__(self, message: str, code: str = ERROR_JOB) -> None:
        super().__init__(message)
        self.code = code


class JobCancelled(Exception):
    """Raised inside a handler (by ``JobContext.check_cancelled``) once the job's cancellation was requested."""


def _nothing(session: Session, job: Job, state: FinalState) -> None:
    """The default ``on_finished``: a kind whose domain rows need nothing when it ends."""


@dataclass(frozen=True)
class JobKind(Generic[P]):
    name: str
    payload: type[P]
    run: Callable[[JobContext, P], dict[str, Any]]
    queue: Callable[[P], str]
    on_finished: Callable[[Session, Job, FinalState], None] = _nothing
