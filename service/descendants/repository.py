"""Every query on descendants."""
from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import DescendantRow


def get(session: Session, descendant_id: int) -> DescendantRow | None:
    return session.get(DescendantRow, descendant_id)


def by_cache_key(session: Session, cache_key: str) -> DescendantRow | None:
    return session.scalar(select(DescendantRow).where(DescendantRow.cache_key == cache_key))


def list_page(
    session: Session, limit: int, after: int | None, version_ids: list[int] | None, ancestry_id: int | None
) -> Sequence[DescendantRow]:
    q = select(DescendantRow).order_by(DescendantRow.id.desc()).limit(limit + 1)
    if after is not None:
        q = q.where(DescendantRow.id < after)
    if version_ids is not None:
        q = q.where(DescendantRow.learngene_version_id.in_(version_ids))
    if ancestry_id is not None:
        q = q.where(DescendantRow.ancestry_id == ancestry_id)
    return session.scalars(q).all()
