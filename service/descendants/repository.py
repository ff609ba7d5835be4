"""Every query on descendants."""
from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from service.keys.auth import Principal
from service.models import Ancestry, DescendantRow, LearngeneRow, LearngeneVersion
from service.ownership import visible


def get(session: Session, descendant_id: int) -> DescendantRow | None:
    return session.get(DescendantRow, descendant_id)


def by_cache_key(session: Session, cache_key: str) -> DescendantRow | None:
    return session.scalar(select(DescendantRow).where(DescendantRow.cache_key == cache_key))


def list_page(
    session: Session, limit: int, after: int | None, version_ids: list[int] | None, ancestry_id: int | None,
    caller: Principal | None,
) -> Sequence[DescendantRow]:
    """A page of the descendants whose source (learngene or ancestry) ``caller`` may see."""
    q = (
        select(DescendantRow)
        .outerjoin(LearngeneVersion, LearngeneVersion.id == DescendantRow.learngene_version_id)
        .outerjoin(LearngeneRow, LearngeneRow.id == LearngeneVersion.learngene_id)
        .outerjoin(Ancestry, Ancestry.id == DescendantRow.ancestry_id)
        .where(or_(and_(LearngeneRow.id.is_not(None), visible(caller, LearngeneRow.owner, LearngeneRow.visibility)),
                   and_(Ancestry.id.is_not(None), visible(caller, Ancestry.owner, Ancestry.visibility))))
        .where(DescendantRow.deleted_at.is_(None))
        .order_by(DescendantRow.id.desc())
        .limit(limit + 1)
    )
    if after is not None:
        q = q.where(DescendantRow.id < after)
    if version_ids is not None:
        q = q.where(DescendantRow.learngene_version_id.in_(version_ids))
    if ancestry_id is not None:
        q = q.where(DescendantRow.ancestry_id == ancestry_id)
    return session.scalars(q).all()
