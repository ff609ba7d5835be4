"""Business rules of jobs: submit, cancel, end. Never commits: the caller's transaction does, then publishes.

Ending a job (however it ends, wherever: the runner, a cancel request, the reaper) goes through ``end_job``,
which records the final state and calls the kind's ``on_finished`` in the same transaction.
"""
from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel
from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

from service.context import AppContext
from service.db import UnitOfWork
from service.errors import Conflict, NotFound
from service.jobs import repository
from service.jobs.kinds import JobKind, checkpoint_name
from service.jobs.states import FinalState
from service.keys.auth import Principal
from service.models import Job
from service.ownership import PRIVATE, can_see

log = logging.getLogger(__name__)


def submit(uow: UnitOfWork, ctx: AppContext, kind: JobKind[Any], payload: BaseModel,
           owner: str | None = None, charge: tuple[str, int] | None = None) -> Job:
    """Add a job of ``kind``; it is published once the unit of work commits (never before: a worker must not
    be handed a row that could still roll back). ``charge``: (quota bucket, bytes) the job counts against that
    bucket's day, in the same transaction (``service.limits.quotas.admit``)."""
    if not isinstance(payload, kind.payload):
        raise TypeError(f"job kind {kind.name!r} takes a {kind.payload.__name__}, not a {type(payload).__name__}")
    queue = kind.queue(payload)
    job = Job(kind=kind.name, queue=queue, payload=payload.model_dump(mode="json"),
              max_attempts=ctx.settings.max_attempts, owner=owner,
              quota_bucket=charge[0] if charge else None, charged_bytes=charge[1] if charge else None)
    uow.session.add(job)
    uow.session.flush()
    job_id = job.id
    uow.after_commit(lambda: publish(ctx, job_id, queue))
    return job


def publish(ctx: AppContext, job_id: str, queue: str) -> bool:
    """Hand a committed job to the broker. A broker that is down loses nothing: the job stays queued in the
    database, and the sweeper publishes it again once its message has been missing for a while."""
    if ctx.dispatcher is None:
        return False
    try:
        ctx.dispatcher.publish(job_id, queue)
    except Exception as exc:
        log.warning("job %s is committed but could not be published (%s: %s); the sweeper will publish it",
                    job_id, type(exc).__name__, exc)
        return False
    return True


def get_job(session: Session, job_id: str, caller: Principal | None = None) -> Job:
    """The job, when ``caller`` may see it: jobs are private to their owner (and admins)."""
    job = repository.get(session, job_id)
    if job is None or not can_see(caller, job.owner, PRIVATE):
        raise NotFound(f"job {job_id!r} not found")
    return job


def end_job(
    session: Session, ctx: AppContext, job_id: str, state: FinalState, *, only_if: ColumnElement[bool],
    result: dict[str, Any] | None = None, error: str | None = None, error_code: str | None = None,
) -> Job | None:
    """Move a job to a final state when ``only_if`` still holds (None when it no longer did: someone else
    ended or took it meanwhile), and let its domain settle its rows in the same transaction."""
    if not repository.end(session, job_id, only_if, state, result=result, error=error, error_code=error_code):
        return None
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    event: dict[str, Any] = {"state": state}
    if error is not None:
        event |= {"error": error, "error_code": error_code}
    repository.add_event(session, job_id, "state", event)
    kind = ctx.kinds.get(job.kind)
    if kind is not None:
        kind.on_finished(session, job, state)
    return job


def forget_checkpoint(ctx: AppContext, job_id: str) -> None:
    """A job that ended can never resume: its training checkpoint goes (best effort; it is only garbage)."""
    try:
        ctx.store.delete_named(checkpoint_name(job_id))
    except Exception:
        log.exception("could not delete the checkpoint of job %s", job_id)


def request_cancel(uow: UnitOfWork, ctx: AppContext, job_id: str) -> Job:
    """A queued job is cancelled at once; a running one is asked to stop, and can no longer succeed: the runner
    records a success only while no cancellation is requested (the two updates serialize on the job's row)."""
    session = uow.session
    get_job(session, job_id)
    ended = end_job(session, ctx, job_id, "cancelled", only_if=Job.state == "queued")
    if ended is not None:
        uow.after_commit(lambda: forget_checkpoint(ctx, job_id))
    elif not repository.request_cancel(session, job_id):
        job = get_job(session, job_id)
        raise Conflict(f"job {job_id!r} already {job.state}")
    repository.add_event(session, job_id, "cancel_requested", {})
    return session.get(Job, job_id, populate_existing=True)  # type: ignore[return-value]
