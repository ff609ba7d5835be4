"""Every query on learngenes, their versions and aliases."""
from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from service.models import Learngene, LearngeneAlias, LearngeneVersion


def by_name(session: Session, name: str) -> Learngene | None:
    return session.scalar(
        select(Learngene).where(Learngene.name == name).options(selectinload(Learngene.aliases))
    )


def list_page(session: Session, limit: int, after: str | None, method: str | None) -> Sequence[Learngene]:
    q = select(Learngene).order_by(Learngene.name).limit(limit + 1).options(selectinload(Learngene.aliases))
    if after is not None:
        q = q.where(Learngene.name > after)
    if method:
        q = q.where(Learngene.method == method)
    return session.scalars(q).all()


def version(session: Session, learngene_id: int, number: int) -> LearngeneVersion | None:
    return session.scalar(
        select(LearngeneVersion).where(
            LearngeneVersion.learngene_id == learngene_id, LearngeneVersion.version == number
        )
    )


def version_by_alias(session: Session, learngene_id: int, alias: str) -> LearngeneVersion | None:
    return session.scalar(
        select(LearngeneVersion)
        .join(LearngeneAlias, LearngeneAlias.version_id == LearngeneVersion.id)
        .where(LearngeneAlias.learngene_id == learngene_id, LearngeneAlias.alias == alias)
    )


def versions_page(session: Session, learngene_id: int, limit: int, after: int | None) -> Sequence[LearngeneVersion]:
    q = (
        select(LearngeneVersion)
        .where(LearngeneVersion.learngene_id == learngene_id)
        .order_by(LearngeneVersion.version.desc())
        .limit(limit + 1)
    )
    if after is not None:
        q = q.where(LearngeneVersion.version < after)
    return session.scalars(q).all()


def max_version(session: Session, learngene_id: int) -> int:
    return session.scalar(
        select(func.coalesce(func.max(LearngeneVersion.version), 0)).where(
            LearngeneVersion.learngene_id == learngene_id
        )
    ) or 0


def count_versions(session: Session, learngene_id: int) -> int:
    return session.scalar(
        select(func.count()).select_from(LearngeneVersion).where(LearngeneVersion.learngene_id == learngene_id)
    ) or 0


def aliases_of(session: Session, version_id: int) -> list[str]:
    return list(session.scalars(select(LearngeneAlias.alias).where(LearngeneAlias.version_id == version_id)))


def set_alias(session: Session, learngene_id: int, alias: str, version_id: int) -> None:
    row = session.get(LearngeneAlias, (learngene_id, alias))
    if row is None:
        session.add(LearngeneAlias(learngene_id=learngene_id, alias=alias, version_id=version_id))
    else:
        row.version_id = version_id
