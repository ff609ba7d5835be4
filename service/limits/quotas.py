"""Quotas of an owner: concurrent jobs and bytes of descendants per UTC day (both counted in the registry, the
truth about jobs), bytes of uploads per UTC day (counted by the rate-limit counters). Checked before any work is
queued."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from service.context import AppContext
from service.errors import TooManyRequests
from service.keys.auth import Principal
from service.limits.counters import seconds_to_midnight
from service.models import Job, utcnow

#: What a client waits before asking again when all of its job slots are taken: jobs take seconds to hours.
JOB_SLOT_RETRY_S = 5.0
ACTIVE = ("queued", "running")
#: Jobs that end so give back what they charged: they made nothing the caller can download.
GIVEN_BACK = ("failed", "cancelled")


#: The first key of the PostgreSQL advisory locks that serialize one owner's job submissions ("LG").
_JOB_SLOT_LOCK_CLASS = 0x4C47


def _serialize_owner_jobs(session: Session, owner: str | None) -> None:
    """Holds, until the transaction ends, a lock that every other submission of ``owner`` needs before it
    counts: without it two concurrent requests both counted the same free slot and both queued (one over the
    quota). PostgreSQL: an advisory lock on the owner's name; SQLite: its one write lock, taken by a write that
    changes nothing, so the count below reads what every earlier submission committed."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(CAST(:lock_class AS integer), hashtext(:owner))"),
                        {"lock_class": _JOB_SLOT_LOCK_CLASS, "owner": owner or ""})
    elif dialect == "sqlite":
        session.execute(text("UPDATE jobs SET owner = owner WHERE 0"))


def admit(session: Session, caller: Principal, descendant_bytes: int | None = None) -> tuple[str, int] | None:
    """Admits a new job of ``caller`` or refuses it (429): when its queued and running jobs already fill its
    quota, or, for an expansion that charges ``descendant_bytes``, when they would pass its descendant bytes of
    the day. Returns the charge to record on the job (``jobs.submit(charge=...)``), None when it charges nothing.
    The caller's submissions are serialized from these counts to their commit (:func:`_serialize_owner_jobs`):
    two requests at once cannot both take the last slot or the day's last bytes."""
    _serialize_owner_jobs(session, caller.owner)
    owner = Job.owner == caller.owner if caller.owner is not None else Job.owner.is_(None)
    active = session.scalar(select(func.count()).select_from(Job).where(owner, Job.state.in_(ACTIVE))) or 0
    if active >= caller.limits.max_concurrent_jobs:
        raise TooManyRequests(
            f"{active} jobs of yours are queued or running; the limit is {caller.limits.max_concurrent_jobs}",
            retry_after=JOB_SLOT_RETRY_S,
        )
    if descendant_bytes is None:
        return None
    limit = caller.limits.descendant_bytes_per_day
    used = descendant_bytes_used(session, caller.bucket)
    if used + descendant_bytes > limit:
        raise _over_daily_quota("descendant_bytes", used, limit, descendant_bytes, "spec")
    return caller.bucket, descendant_bytes


def _over_daily_quota(quota: str, used: int, limit: int, asked: int, field: str) -> TooManyRequests:
    return TooManyRequests(
        f"{quota.replace('_', ' ')} quota: {used} of {limit} bytes used today (UTC), {asked} more asked",
        retry_after=seconds_to_midnight(), field=field,
    )


def _charge(ctx: AppContext, caller: Principal, quota: str, amount: int, limit: int, field: str) -> None:
    counters = ctx.counters
    if counters is None:
        return
    added, used = counters.charge(quota, caller.bucket, amount, limit)
    if not added:
        raise _over_daily_quota(quota, used, limit, amount, field)


def _today() -> dt.datetime:
    return utcnow().replace(hour=0, minute=0, second=0, microsecond=0)


def descendant_bytes_used(session: Session, bucket: str) -> int:
    """What ``bucket``'s jobs created today (UTC) charged, less those that failed or were cancelled."""
    used = session.scalar(
        select(func.coalesce(func.sum(Job.charged_bytes), 0))
        .where(Job.quota_bucket == bucket, Job.created_at >= _today(), Job.state.not_in(GIVEN_BACK)))
    return int(used or 0)


def charge_upload(ctx: AppContext, caller: Principal, nbytes: int) -> None:
    _charge(ctx, caller, "upload_bytes", nbytes, caller.limits.upload_bytes_per_day, "file")
