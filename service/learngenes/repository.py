"""Every query on learngenes, their versions and aliases."""
from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.keys.auth import Principal
from service.models import DatasetRow, Job, LearngeneRow, LearngeneAlias, LearngeneVersion
from service.ownership import visible


def by_name(session: Session, name: str) -> LearngeneRow | None:
    return session.scalar(
        select(LearngeneRow).where(LearngeneRow.name == name)
    )


def list_page(session: Session, limit: int, after: str | None, method: str | None,
              caller: Principal | None) -> Sequence[LearngeneRow]:
    q = (select(LearngeneRow).where(visible(caller, LearngeneRow.owner, LearngeneRow.visibility),
                                    LearngeneRow.deleted_at.is_(None))
         .order_by(LearngeneRow.name).limit(limit + 1))
    if after is not None:
        q = q.where(LearngeneRow.name > after)
    if method:
        q = q.where(LearngeneRow.method == method)
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
        .where(LearngeneVersion.learngene_id == learngene_id, LearngeneVersion.deleted_at.is_(None))
        .order_by(LearngeneVersion.version.desc())
        .limit(limit + 1)
    )
    if after is not None:
        q = q.where(LearngeneVersion.version < after)
    return session.scalars(q).all()


def max_version(session: Session, learngene_id: int) -> int:
    """Deleted versions count: a version number is never given twice."""
    return session.scalar(
        select(func.coalesce(func.max(LearngeneVersion.version), 0)).where(
            LearngeneVersion.learngene_id == learngene_id
        )
    ) or 0


def version_counts(session: Session, learngene_ids: Sequence[int]) -> dict[int, int]:
    """Number of versions of each learngene, in one query for a whole page."""
    rows = session.execute(
        select(LearngeneVersion.learngene_id, func.count())
        .where(LearngeneVersion.learngene_id.in_(learngene_ids), LearngeneVersion.deleted_at.is_(None))
        .group_by(LearngeneVersion.learngene_id)
    )
    return {learngene_id: count for learngene_id, count in rows}


def alias_targets(session: Session, learngene_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """``{learngene id: {alias: version number}}`` in one query for a whole page."""
    rows = session.execute(
        select(LearngeneAlias.learngene_id, LearngeneAlias.alias, LearngeneVersion.version)
        .join(LearngeneVersion, LearngeneVersion.id == LearngeneAlias.version_id)
        .where(LearngeneAlias.learngene_id.in_(learngene_ids))
        .order_by(LearngeneAlias.alias)
    )
    out: dict[int, dict[str, int]] = {i: {} for i in learngene_ids}
    for learngene_id, alias, number in rows:
        out[learngene_id][alias] = number
    return out


def aliases_by_version(session: Session, version_ids: Sequence[int]) -> dict[int, list[str]]:
    """The aliases pointing at each version, in one query for a whole page."""
    rows = session.execute(
        select(LearngeneAlias.version_id, LearngeneAlias.alias)
        .where(LearngeneAlias.version_id.in_(version_ids))
        .order_by(LearngeneAlias.alias)
    )
    out: dict[int, list[str]] = {i: [] for i in version_ids}
    for version_id, alias in rows:
        out[version_id].append(alias)
    return out


def set_alias(session: Session, learngene_id: int, alias: str, version_id: int) -> None:
    row = session.get(LearngeneAlias, (learngene_id, alias))
    if row is None:
        session.add(LearngeneAlias(learngene_id=learngene_id, alias=alias, version_id=version_id))
    else:
        row.version_id = version_id


def delete_alias(session: Session, learngene_id: int, alias: str) -> bool:
    row = session.get(LearngeneAlias, (learngene_id, alias))
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


def job_owners(session: Session, job_ids: Sequence[str]) -> dict[str, str | None]:
    """The owner of each job that made a version of a page (their lineage links), in one query."""
    return {job_id: owner for job_id, owner in session.execute(select(Job.id, Job.owner).where(Job.id.in_(job_ids)))}


def datasets(session: Session, dataset_ids: Sequence[int]) -> dict[int, DatasetRow]:
    """The uploaded datasets a page of versions was condensed on, in one query."""
    return {row.id: row for row in session.scalars(select(DatasetRow).where(DatasetRow.id.in_(dataset_ids)))}
