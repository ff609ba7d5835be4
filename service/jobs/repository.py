"""Every query on jobs and their events."""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from service.keys.auth import Principal
from service.models import Job, JobEvent, utcnow
from service.ownership import visible


def get(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def list_page(session: Session, limit: int, after: str | None, state: str | None, kind: str | None,
              caller: Principal | None) -> Sequence[Job]:
    q = select(Job).where(visible(caller, Job.owner)).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    if state:
        q = q.where(Job.state == state)
    if kind:
        q = q.where(Job.kind == kind)
    if after:
        ref = session.get(Job, after)
        if ref is not None:
            q = q.where(
                or_(Job.created_at < ref.created_at, and_(Job.created_at == ref.created_at, Job.id < ref.id))
            )
    return session.scalars(q).all()


def claim(session: Session, job_id: str, worker: str, stale_before: dt.datetime) -> bool:
    """Atomically take a queued job, or a running one whose worker stopped beating. One winner only."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.cancel_requested.is_(False),
            or_(Job.state == "queued", stale(stale_before)),
        )
        .values(
            state="running",
            attempts=Job.attempts + 1,
            worker=worker,
            heartbeat_at=now,
            started_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def heartbeat(session: Session, job_id: str, worker: str) -> bool:
    """Refresh the heartbeat; returns whether cancellation was requested."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "running", Job.worker == worker)
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def end(
    session: Session, job_id: str, only_if: ColumnElement[bool], state: str, *, result: dict[str, Any] | None,
    error: str | None, error_code: str | None,
) -> bool:
    """Move a job to a final state if ``only_if`` holds on its row; False when it no longer did."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, only_if)
        .values(state=state, result=result, error=error, error_code=error_code, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1


def request_cancel(session: Session, job_id: str) -> bool:
    """Flag a running job for cancellation; False when it is not running (any more)."""
    res = session.execute(
        update(Job).where(Job.id == job_id, Job.state == "running").values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1


def held_by(worker: str) -> ColumnElement[bool]:
    return and_(Job.state == "running", Job.worker == worker)


def stale(stale_before: dt.datetime) -> ColumnElement[bool]:
    return and_(Job.state == "running", Job.heartbeat_at < stale_before)


def set_progress(session: Session, job_id: str, progress: dict[str, Any]) -> None:
    session.execute(
        update(Job).where(Job.id == job_id).values(progress=progress).execution_options(synchronize_session=False)
    )


def add_event(session: Session, job_id: str, kind: str, data: dict[str, Any]) -> None:
    session.add(JobEvent(job_id=job_id, kind=kind, data=data))


def events_after(session: Session, job_id: str, after_id: int, limit: int = 500) -> Sequence[JobEvent]:
    q = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after_id).order_by(JobEvent.id).limit(limit)
    return session.scalars(q).all()


def stale_running(session: Session, stale_before: dt.datetime) -> Sequence[Job]:
    return session.scalars(select(Job).where(stale(stale_before))).all()


def requeue_if_stale(session: Session, job_id: str, stale_before: dt.datetime) -> bool:
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, stale(stale_before))
        .values(state="queued", worker=None, published_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1


def release(session: Session, job_id: str, worker: str) -> bool:
    """Hand a running job back to the queue (its process is stopping): the attempt it was on is not counted,
    and a job whose cancellation was requested meanwhile is not released (it ends cancelled instead)."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, held_by(worker), Job.cancel_requested.is_(False))
        .values(state="queued", worker=None, published_at=utcnow(), attempts=Job.attempts - 1)
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1


def queued_before(session: Session, published_before: dt.datetime) -> Sequence[Job]:
    """Queued jobs last published before ``published_before``: their message may be lost."""
    q = select(Job).where(Job.state == "queued", Job.published_at < published_before).order_by(Job.created_at)
    return session.scalars(q).all()


def mark_published(session: Session, job_id: str, was: dt.datetime, now: dt.datetime) -> bool:
    """Claim the right to publish a queued job again (one sweeper wins when several look at once)."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "queued", Job.published_at == was)
        .values(published_at=now)
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1


def queued(session: Session) -> Sequence[Job]:
    return session.scalars(select(Job).where(Job.state == "queued").order_by(Job.created_at)).all()


def events_of_kind(session: Session, job_id: str, kind: str) -> Sequence[JobEvent]:
    q = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == kind).order_by(JobEvent.id)
    return session.scalars(q).all()
