"""Every query on descendants."""
from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import Descendant


def get(session: Session, descendant_id: int) -> Descendant | None:
    return session.get(Descendant, descendant_id)


def by_cache_key(session: Session, cache_key: str) -> Descendant | None:
    return session.scalar(select(Descendant).where(Descendant.cache_key == cache_key))


def list_page(
    session: Session, limit: int, after: int | None, version_ids: list[int] | None, ancestry_id: int | None
) -> Sequence[Descendant]:
    q = select(Descendant).order_by(Descendant.id.desc()).limit(limit + 1)
    if after is not None:
        q = q.where(Descendant.id < after)
    if version_ids is not None:
        q = q.where(Descendant.learngene_version_id.in_(version_ids))
    if ancestry_id is not None:
        q = q.where(Descendant.ancestry_id == ancestry_id)
    return session.scalars(q).all()
