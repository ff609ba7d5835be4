"""What a job kind is, and what its handler is given: declared by a domain, run by the kernel, which imports no
domain.

A domain (``service/<domain>/tasks.py``) declares each of its kinds once, and exports them in its ``KINDS``: the
typed payload (validated when the job is submitted, stored as JSON, parsed back for the handler), the handler,
the queue, and ``on_finished``: what happens to the domain's rows when the job ends. The kernel calls
``on_finished`` however the job ends (success, failure, giving up on a lost worker, cancellation), in the
transaction that records the end, so a domain row can never outlive its job in a state that waits for it. The
composition root (``service/wiring.py``) collects every domain's kinds.

A handler gets a :class:`JobContext`: the pieces of the process's context it may use (sessions, artifact store,
settings), and the means to report, checkpoint and stop. Not the whole ``AppContext``, which holds the kinds:
this module stays below it.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from service.jobs import repository
from service.jobs.states import ERROR_JOB, FinalState
from service.models import Job
from service.settings import Settings
from service.storage import ArtifactStore

P = TypeVar("P", bound=BaseModel)


class JobFailed(Exception):
    """A handler's way to fail its job with a message (and a code) meant for the user."""

    def __init__(self, message: str, code: str = ERROR_JOB) -> None:
        super().__init__(message)
        self.code = code


class JobCancelled(Exception):
    """Raised inside a handler (by ``JobContext.check_cancelled``) once the job's cancellation was requested."""


def checkpoint_name(job_id: str) -> str:
    return f"checkpoints/{job_id}"


@dataclass
class JobContext:
    """What a handler sees besides its payload: the stores, and the means to report, checkpoint and stop."""

    sessions: sessionmaker[Session]
    store: ArtifactStore
    settings: Settings
    job_id: str
    attempt: int
    _cancel: threading.Event = field(default_factory=threading.Event)
    #: The process is stopping: the handler stops as for a cancellation, and the kernel queues the job again.
    _stopping: threading.Event = field(default_factory=threading.Event)
    _on_success: list[Callable[[Session], None]] = field(default_factory=list)

    def progress(self, data: dict[str, Any], *, event: str = "progress") -> None:
        with self.sessions.begin() as session:
            repository.set_progress(session, self.job_id, data)
            repository.add_event(session, self.job_id, event, data)

    def should_stop(self) -> bool:
        return self._cancel.is_set() or self._stopping.is_set()

    def check_cancelled(self) -> None:
        if self.should_stop():
            raise JobCancelled()

    @property
    def interrupted(self) -> bool:
        """Stopped by the process's shutdown, not by a cancellation of the job."""
        return self._stopping.is_set() and not self._cancel.is_set()

    def on_success(self, write: Callable[[Session], None]) -> None:
        """Registry writes that land with the job's success, in its transaction: a job taken over by another
        worker, or cancelled meanwhile, never publishes them."""
        self._on_success.append(write)

    def save_checkpoint(self, data: bytes) -> None:
        """Only the newest checkpoint is kept; it is deleted when the job ends, however it ends."""
        self.store.put_named(checkpoint_name(self.job_id), data)

    def load_checkpoint(self) -> bytes | None:
        return self.store.get_named(checkpoint_name(self.job_id))


def _nothing(session: Session, job: Job, state: FinalState) -> None:
    """The default ``on_finished``: a kind whose domain rows need nothing when it ends."""


@dataclass(frozen=True)
class JobKind(Generic[P]):
    name: str
    payload: type[P]
    run: Callable[[JobContext, P], dict[str, Any]]
    queue: Callable[[P], str]
    on_finished: Callable[[Session, Job, FinalState], None] = _nothing
