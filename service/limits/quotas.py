"""Quotas of an owner: concurrent jobs (counted in the registry, the truth about jobs), bytes of descendants
and of uploads per UTC day (counted by the rate-limit counters). Checked before any work is queued."""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.context import AppContext
from service.errors import TooManyRequests
from service.keys.auth import Principal
from service.limits.counters import seconds_to_midnight
from service.models import Job

#: What a client waits before asking again when all of its job slots are taken: jobs take seconds to hours.
JOB_SLOT_RETRY_S = 5.0
ACTIVE = ("queued", "running")


def check_job_slot(session: Session, caller: Principal) -> None:
    """Refuses a new job when the caller's queued and running jobs already fill its quota."""
    owner = Job.owner == caller.owner if caller.owner is not None else Job.owner.is_(None)
    active = session.scalar(select(func.count()).select_from(Job).where(owner, Job.state.in_(ACTIVE))) or 0
    if active >= caller.limits.max_concurrent_jobs:
        raise TooManyRequests(
            f"{active} jobs of yours are queued or running; the limit is {caller.limits.max_concurrent_jobs}",
            retry_after=JOB_SLOT_RETRY_S,
        )


def _charge(ctx: AppContext, caller: Principal, quota: str, amount: int, limit: int, field: str) -> None:
    counters = ctx.counters
    if counters is None:
        return
    added, used = counters.charge(quota, caller.bucket, amount, limit)
    if not added:
        raise TooManyRequests(
            f"{quota.replace('_', ' ')} quota: {used} of {limit} bytes used today (UTC), {amount} more asked",
            retry_after=seconds_to_midnight(), field=field,
        )


def charge_descendant(ctx: AppContext, caller: Principal, nbytes: int) -> None:
    _charge(ctx, caller, "descendant_bytes", nbytes, caller.limits.descendant_bytes_per_day, "spec")


def charge_upload(ctx: AppContext, caller: Principal, nbytes: int) -> None:
    _charge(ctx, caller, "upload_bytes", nbytes, caller.limits.upload_bytes_per_day, "file")
