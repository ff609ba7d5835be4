"""Business rules of jobs. Never commits: the caller's unit of work does, then publishes."""
from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service.context import AppContext
from service.db import UnitOfWork
from service.errors import Conflict, NotFound
from service.jobs import repository
from service.models import Job, utcnow


def create_job(uow: UnitOfWork, ctx: AppContext, kind: str, queue: str, payload: dict[str, Any],
               owner: str | None = None) -> Job:
    job = Job(kind=kind, queue=queue, payload=payload, max_attempts=ctx.settings.max_attempts, owner=owner)
    uow.session.add(job)
    uow.session.flush()
    job_id = job.id
    dispatcher = ctx.dispatcher
    if dispatcher is not None:
        uow.after_commit(lambda: dispatcher.publish(job_id, queue))
    return job


def get_job(session: Session, job_id: str) -> Job:
    job = repository.get(session, job_id)
    if job is None:
        raise NotFound(f"job {job_id!r} not found")
    return job


def request_cancel(session: Session, job_id: str) -> Job:
    """A queued job is cancelled at once; a running one stops at its next step (the runner checks)."""
    job = get_job(session, job_id)
    if job.state in repository.FINISHED:
        raise Conflict(f"job {job_id!r} already {job.state}")
    job.cancel_requested = True
    if job.state == "queued":
        job.state = "cancelled"
        job.finished_at = utcnow()
    repository.add_event(session, job.id, "cancel_requested", {})
    return job
