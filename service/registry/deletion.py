"""Deleting from the registry, with its lineage rules.

* Descendants, learngene versions, whole learngenes, ancestries and datasets are deleted by their owner or an
  admin (``service.ownership``: others who see them get 403, others 404).
* A deleted row stays as a tombstone (``deleted_at``, ``deleted_by``, its sha256): lineage that names it stays
  readable (a version condensed from a deleted ancestry or dataset still says which, and that it was deleted),
  its id, name or version number is never given to something else, and reading it answers 410.
* What others depend on is refused with 409 naming the dependants: an ancestry that learngene versions were
  condensed from, a dataset in a version's lineage; ``cascade`` (admins only) deletes it anyway, the dependants
  keeping their lineage through the tombstone. A descendant cannot outlive its source (it could no longer be made
  again): deleting a version, a learngene or an ancestry deletes the descendants expanded from it.
* Nothing a queued or running job reads is deleted under it (409 naming the job).
* Blobs leave storage after the commit, once no live row names them (``service/blobs.py``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.ancestries import service as ancestries
from service.blobs import remove_unreferenced
from service.context import AppContext
from service.datasets import service as datasets
from service.db import UnitOfWork
from service.descendants import service as descendants
from service.errors import Conflict, Forbidden
from service.keys.auth import Principal
from service.learngenes import repository as learngene_repo
from service.learngenes import service as learngenes
from service.models import (Ancestry, DatasetRow, DescendantRow, Job, LearngeneAlias, LearngeneRow,
                            LearngeneVersion, utcnow)
from service.ownership import PRIVATE, can_see, check_may_change

ACTIVE = ("queued", "running")
#: How many dependants a 409 names before it counts the rest.
NAMED = 10


@dataclass
class Deletion:
    """What one deletion did, for the response and for the blobs to remove after the commit."""

    deleted: list[str] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)

    def summary(self) -> dict[str, object]:
        return {"deleted": self.deleted}


def _by(caller: Principal | None) -> str | None:
    return caller.owner if caller is not None else None


def _tombstone(row: Ancestry | DatasetRow | LearngeneRow | LearngeneVersion | DescendantRow,
               caller: Principal | None) -> None:
    row.deleted_at = utcnow()
    row.deleted_by = _by(caller)


def _finish(uow: UnitOfWork, ctx: AppContext, done: Deletion) -> Deletion:
    keys = set(done.keys)
    uow.after_commit(lambda: remove_unreferenced(ctx.sessions, ctx.store, keys))
    return done


def _active_jobs(session: Session) -> Sequence[Job]:
    return session.scalars(select(Job).where(Job.state.in_(ACTIVE)).order_by(Job.created_at)).all()


def _refuse_if_jobs(jobs: list[Job], what: str, caller: Principal | None) -> None:
    """409 naming the jobs the caller may see (jobs are private: the others are only counted)."""
    if jobs:
        seen = [j.id for j in jobs if can_see(caller, j.owner, PRIVATE)]
        names = ", ".join(seen[:NAMED]) + (f" and {len(jobs) - len(seen)} of other owners" if len(seen) < len(jobs)
                                          else "")
        raise Conflict(f"{what} is read by {len(jobs)} queued or running job(s) ({names}); cancel them or wait "
                       "for them to end before deleting it")


def _expanding(session: Session, jobs: Sequence[Job]) -> dict[str, DescendantRow]:
    """The descendant each active expand job makes."""
    out = {}
    for job in jobs:
        descendant_id = job.payload.get("descendant_id") if isinstance(job.payload, dict) else None
        if job.kind == "expand" and isinstance(descendant_id, int):
            row = session.get(DescendantRow, descendant_id)
            if row is not None:
                out[job.id] = row
    return out


def _delete_descendants(session: Session, rows: Sequence[DescendantRow], caller: Principal | None,
                        done: Deletion) -> None:
    for row in rows:
        if row.deleted_at is None:
            _tombstone(row, caller)
            row.pinned = False
            if row.storage_key:
                done.keys.add(row.storage_key)
            done.deleted.append(f"descendant:{row.id}")


def _live_descendants(session: Session, *, version_ids: Sequence[int] = (),
                      ancestry_id: int | None = None) -> Sequence[DescendantRow]:
    q = select(DescendantRow).where(DescendantRow.deleted_at.is_(None))
    if ancestry_id is not None:
        q = q.where(DescendantRow.ancestry_id == ancestry_id)
    else:
        q = q.where(DescendantRow.learngene_version_id.in_(list(version_ids)))
    return session.scalars(q).all()


# --- descendants -------------------------------------------------------------------------------------------------

def delete_descendant(uow: UnitOfWork, ctx: AppContext, descendant_id: int, caller: Principal | None) -> Deletion:
    session = uow.session
    row = descendants.get_descendant(session, descendant_id, caller)
    descendants.check_may_manage(session, row, caller)
    active = _active_jobs(session)
    expanding = _expanding(session, active)
    _refuse_if_jobs([j for j in active if j.id in expanding and expanding[j.id].id == row.id],
                    f"descendant {descendant_id}", caller)
    done = Deletion()
    _delete_descendants(session, [row], caller, done)
    return _finish(uow, ctx, done)


# --- learngenes ---------------------------------------------------------------------------------------------------

def _version_jobs(session: Session, versions: Sequence[LearngeneVersion], learngene: str | None) -> list[Job]:
    """Active jobs that read one of ``versions`` (expanding it, refining from it) or publish into ``learngene``."""
    ids = {v.id for v in versions}
    active = _active_jobs(session)
    expanding = _expanding(session, active)
    out = []
    for job in active:
        payload = job.payload if isinstance(job.payload, dict) else {}
        if (job.id in expanding and expanding[job.id].learngene_version_id in ids) or (
                job.kind == "condense" and (payload.get("source_version_id") in ids
                                            or (learngene is not None and payload.get("learngene") == learngene))):
            out.append(job)
    return out


def _delete_versions(session: Session, lg: LearngeneRow, versions: Sequence[LearngeneVersion],
                     caller: Principal | None, done: Deletion) -> None:
    ids = [v.id for v in versions]
    _delete_descendants(session, _live_descendants(session, version_ids=ids), caller, done)
    session.execute(delete(LearngeneAlias).where(LearngeneAlias.version_id.in_(ids)))
    for v in versions:
        _tombstone(v, caller)
        if v.storage_key:
            done.keys.add(v.storage_key)
        done.deleted.append(f"learngene:{lg.name}:{v.version}")
    session.flush()
    # ``latest`` follows the newest version left (none: the learngene has no version now).
    newest = session.scalar(select(LearngeneVersion).where(
        LearngeneVersion.learngene_id == lg.id, LearngeneVersion.deleted_at.is_(None))
        .order_by(LearngeneVersion.version.desc()).limit(1))
    if newest is not None:
        learngene_repo.set_alias(session, lg.id, learngenes.LATEST, newest.id)


def delete_version(uow: UnitOfWork, ctx: AppContext, name: str, ref: str, caller: Principal | None) -> Deletion:
    session = uow.session
    lg = learngenes.get_learngene(session, name, caller)
    check_may_change(caller, lg.owner, f"learngene {name!r}")
    v = learngenes.get_version(session, lg, ref)
    _refuse_if_jobs(_version_jobs(session, [v], None), f"learngene {name!r} version {v.version}", caller)
    done = Deletion()
    _delete_versions(session, lg, [v], caller, done)
    return _finish(uow, ctx, done)


def delete_learngene(uow: UnitOfWork, ctx: AppContext, name: str, caller: Principal | None) -> Deletion:
    """Every version (and their descendants); the learngene's row stays as a tombstone that keeps its name for
    its owner: they may publish into it again, version numbers going on from the last."""
    session = uow.session
    lg = learngenes.get_learngene(session, name, caller)
    check_may_change(caller, lg.owner, f"learngene {name!r}")
    versions = [v for v in lg.versions if v.deleted_at is None]
    _refuse_if_jobs(_version_jobs(session, versions, lg.name), f"learngene {name!r}", caller)
    done = Deletion()
    _delete_versions(session, lg, versions, caller, done)
    session.execute(delete(LearngeneAlias).where(LearngeneAlias.learngene_id == lg.id))
    _tombstone(lg, caller)
    done.deleted.append(f"learngene:{lg.name}")
    return _finish(uow, ctx, done)


# --- ancestries and datasets ----------------------------------------------------------------------------------------

def _check_cascade(caller: Principal | None, cascade: bool) -> None:
    if cascade and caller is not None and not caller.has("admin"):
        raise Forbidden("cascade=true is for admins: ask one, or delete the dependants first", field="cascade")


def _refuse_dependants(session: Session, versions: Sequence[LearngeneVersion], what: str,
                       caller: Principal | None) -> None:
    """409 naming the live versions that depend on it (those the caller may not see are only counted)."""
    if not versions:
        return
    seen = [f"{v.learngene.name}:{v.version}" for v in versions
            if can_see(caller, v.learngene.owner, v.learngene.visibility)]
    hidden = len(versions) - len(seen)
    named = ", ".join(seen[:NAMED]) + (f" and {len(seen) - NAMED} more" if len(seen) > NAMED else "")
    others = f"{hidden} version(s) of other owners' private learngenes" if hidden else ""
    listing = "; ".join(p for p in (named, others) if p)
    raise Conflict(f"{what} is in the lineage of learngene versions: {listing}. Delete them first, or an admin "
                   "deletes it with cascade=true (they keep their lineage, naming it as deleted)")


def _live_versions(session: Session, *, ancestry_id: int | None = None,
                   dataset: str | None = None) -> Sequence[LearngeneVersion]:
    q = select(LearngeneVersion).where(LearngeneVersion.deleted_at.is_(None)).order_by(LearngeneVersion.id)
    q = q.where(LearngeneVersion.ancestry_id == ancestry_id) if ancestry_id is not None else q.where(
        LearngeneVersion.dataset == dataset)
    return session.scalars(q).all()


def delete_ancestry(uow: UnitOfWork, ctx: AppContext, ancestry_id: int, caller: Principal | None,
                    cascade: bool = False) -> Deletion:
    session = uow.session
    row = ancestries.get_ancestry(session, ancestry_id, caller=caller)
    check_may_change(caller, row.owner, f"ancestry {ancestry_id}")
    _check_cascade(caller, cascade)
    active = _active_jobs(session)
    expanding = _expanding(session, active)
    _refuse_if_jobs([j for j in active if (j.kind == "condense" and isinstance(j.payload, dict)
                                           and j.payload.get("ancestry_id") == ancestry_id)
                     or (j.id in expanding and expanding[j.id].ancestry_id == ancestry_id)],
                    f"ancestry {ancestry_id}", caller)
    if not cascade:
        _refuse_dependants(session, _live_versions(session, ancestry_id=ancestry_id), f"ancestry {ancestry_id}",
                           caller)
    done = Deletion()
    _delete_descendants(session, _live_descendants(session, ancestry_id=ancestry_id), caller, done)
    _tombstone(row, caller)
    row.upload_key = None  # the same file uploaded again is a new ancestry
    done.keys.add(row.storage_key)
    done.deleted.append(f"ancestry:{ancestry_id}")
    return _finish(uow, ctx, done)


def delete_dataset(uow: UnitOfWork, ctx: AppContext, dataset_id: int, caller: Principal | None,
                   cascade: bool = False) -> Deletion:
    session = uow.session
    row = datasets.get_dataset(session, dataset_id, caller=caller)
    check_may_change(caller, row.owner, f"dataset {dataset_id}")
    _check_cascade(caller, cascade)
    _refuse_if_jobs([j for j in _active_jobs(session) if j.kind == "condense" and isinstance(j.payload, dict)
                     and j.payload.get("dataset") == row.uri], f"dataset {dataset_id}", caller)
    if not cascade:
        _refuse_dependants(session, _live_versions(session, dataset=row.uri), f"dataset {dataset_id}", caller)
    done = Deletion()
    _tombstone(row, caller)
    done.keys.add(row.storage_key)
    done.deleted.append(f"dataset:{dataset_id}")
    return _finish(uow, ctx, done)
