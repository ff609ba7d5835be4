"""Every query on API keys."""
from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import ApiKey


def active_by_hash(session: Session, key_hash: str) -> ApiKey | None:
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)))


def is_active(session: Session, key_id: int) -> bool:
    return session.scalar(select(ApiKey.id).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))) is not None


def any_active(session: Session) -> bool:
    return session.scalar(select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)) is not None


def get(session: Session, key_id: int) -> ApiKey | None:
    return session.get(ApiKey, key_id)


def by_prefix(session: Session, prefix: str) -> Sequence[ApiKey]:
    return session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).all()


def list_page(session: Session, limit: int, after: int | None, owner: str | None) -> Sequence[ApiKey]:
    q = select(ApiKey).order_by(ApiKey.id.desc()).limit(limit + 1)
    if after is not None:
        q = q.where(ApiKey.id < after)
    if owner is not None:
        q = q.where(ApiKey.owner == owner)
    return session.scalars(q).all()
