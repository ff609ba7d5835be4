"""Who uses how much: stored bytes per kind, jobs, descendants produced and today's quotas, per owner."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.context import AppContext
from service.descendants.cache import stored_bytes
from service.errors import Forbidden
from service.keys.auth import BOOTSTRAP_OWNER, Principal, anonymous, default_limits, key_principal
from service.limits.quotas import descendant_bytes_used
from service.models import Ancestry, ApiKey, DatasetRow, DescendantRow, Job, LearngeneRow, LearngeneVersion
from service.registry.schemas import OwnerUsage, QuotaLeft, Stored, UsageReport

KINDS = ("ancestries", "datasets", "learngene_versions", "descendants")
NOBODY = "\x00nobody"  # a dict key for owner NULL


def _key(owner: str | None) -> str:
    return NOBODY if owner is None else owner


def _stored(session: Session) -> dict[str, dict[str, Stored]]:
    queries: dict[str, Any] = {
        "ancestries": select(Ancestry.owner, func.count(), func.coalesce(func.sum(Ancestry.size_bytes), 0))
        .where(Ancestry.deleted_at.is_(None)).group_by(Ancestry.owner),
        "datasets": select(DatasetRow.owner, func.count(), func.coalesce(func.sum(DatasetRow.size_bytes), 0))
        .where(DatasetRow.deleted_at.is_(None)).group_by(DatasetRow.owner),
        "learngene_versions": select(LearngeneRow.owner, func.count(),
                                     func.coalesce(func.sum(LearngeneVersion.size_bytes), 0))
        .join(LearngeneRow, LearngeneRow.id == LearngeneVersion.learngene_id)
        .where(LearngeneVersion.deleted_at.is_(None)).group_by(LearngeneRow.owner),
        "descendants": select(DescendantRow.owner, func.count(), func.coalesce(func.sum(DescendantRow.size_bytes), 0))
        .where(DescendantRow.deleted_at.is_(None), DescendantRow.status == "ready").group_by(DescendantRow.owner),
    }
    out: dict[str, dict[str, Stored]] = defaultdict(dict)
    for kind, q in queries.items():
        for owner, count, nbytes in session.execute(q):
            out[_key(owner)][kind] = Stored(count=count, bytes=int(nbytes))
    return out


def _counts(session: Session, q: Any) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for owner, label, n in session.execute(q):
        out[_key(owner)][label] = n
    return out


def _quota(session: Session, ctx: AppContext, who: Principal, prefix: str | None) -> QuotaLeft:
    counters = ctx.counters
    used_d = descendant_bytes_used(session, who.bucket)
    used_u = counters.used("upload_bytes", who.bucket) if counters is not None else 0
    lim = who.limits
    return QuotaLeft(key=who.bucket, prefix=prefix,
                     descendant_bytes_limit=lim.descendant_bytes_per_day, descendant_bytes_used_today=used_d,
                     descendant_bytes_left_today=max(0, lim.descendant_bytes_per_day - used_d),
                     upload_bytes_limit=lim.upload_bytes_per_day, upload_bytes_used_today=used_u,
                     upload_bytes_left_today=max(0, lim.upload_bytes_per_day - used_u),
                     max_concurrent_jobs=lim.max_concurrent_jobs)


def _quotas(session: Session, ctx: AppContext, owner: str | None) -> list[QuotaLeft]:
    if owner is None:
        return [_quota(session, ctx, anonymous(ctx.settings), None)]
    out = []
    if owner == BOOTSTRAP_OWNER and ctx.settings.api_token:
        out.append(_quota(session, ctx, Principal(BOOTSTRAP_OWNER, BOOTSTRAP_OWNER, frozenset({"admin"}),
                                                  default_limits(ctx.settings)), None))
    keys = session.scalars(select(ApiKey).where(ApiKey.owner == owner, ApiKey.revoked_at.is_(None))
                           .order_by(ApiKey.id)).all()
    out.extend(_quota(session, ctx, key_principal(ctx.settings, row), row.prefix) for row in keys)
    return out


def report(session: Session, ctx: AppContext, caller: Principal, owner: str | None = None) -> UsageReport:
    """The caller's own usage; an admin's: every owner's, or ``owner``'s."""
    if owner is not None and owner != caller.owner and not caller.has("admin"):
        raise Forbidden("only admins see another owner's usage", field="owner")
    stored = _stored(session)
    jobs = _counts(session, select(Job.owner, Job.state, func.count()).group_by(Job.owner, Job.state))
    produced = _counts(session, select(DescendantRow.owner, DescendantRow.status, func.count())
                       .where(DescendantRow.deleted_at.is_(None)).group_by(DescendantRow.owner, DescendantRow.status))
    if owner is not None:
        owners: Sequence[str | None] = [owner]
    elif caller.has("admin"):
        known = set(stored) | set(jobs) | set(produced)
        known |= set(session.scalars(select(ApiKey.owner).where(ApiKey.revoked_at.is_(None))))
        owners = sorted((None if k == NOBODY else k for k in known), key=lambda o: (o is not None, o or ""))
    else:
        owners = [caller.owner]
    out = []
    for who in owners:
        k = _key(who)
        kinds = {kind: stored[k].get(kind, Stored(count=0, bytes=0)) for kind in KINDS}
        made = produced.get(k, {})
        out.append(OwnerUsage(
            owner=who, stored=kinds, stored_bytes=sum(s.bytes for s in kinds.values()),
            descendants_produced=sum(made.values()), descendants_evicted=made.get("evicted", 0),
            jobs={state: jobs.get(k, {}).get(state, 0)
                  for state in ("queued", "running", "succeeded", "failed", "cancelled")},
            quotas=_quotas(session, ctx, who)))
    return UsageReport(owners=out, descendant_cache_bytes=ctx.settings.descendant_cache_bytes,
                       descendant_cache_used_bytes=stored_bytes(session))
