"""Business rules of the learngene registry: naming, version resolution, publishing new versions."""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from service.bounds import parse_id
from service.errors import Conflict, InvalidRequest, NotFound
from service.keys.auth import Principal
from service.learngenes import repository
from service.learngenes.schemas import LearngeneOut, LearngeneVersionOut, Lineage, Tombstone
from service.models import Ancestry, DatasetRow, LearngeneRow, LearngeneVersion
from service.ownership import (PRIVATE, can_see, check_may_change, default_visibility, stored_visibility,
                               tombstone_error)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9._-]{0,59}$")
LATEST = "latest"


def check_name(name: str, field: str = "learngene") -> str:
    if not NAME_RE.match(name):
        raise InvalidRequest(
            f"learngene name {name!r} must be 1-100 of lowercase letters, digits, '.', '_' or '-'", field=field
        )
    return name


def get_learngene(session: Session, name: str, caller: Principal | None = None,
                  field: str | None = None, gone: bool = False) -> LearngeneRow:
    """The learngene ``name``, as far as ``caller`` may see it (another owner's private one is not found; a deleted
    one neither, or 410 with its tombstone when ``gone``)."""
    lg = repository.by_name(session, name) if NAME_RE.match(name) else None
    if lg is None or not can_see(caller, lg.owner, lg.visibility):
        raise NotFound(f"learngene {name!r} not found", field=field)
    if lg.deleted_at is not None:
        raise tombstone_error(f"learngene {name!r}", lg.deleted_by, lg.deleted_at, None, gone, field)
    return lg


def get_version(session: Session, lg: LearngeneRow, ref: str, gone: bool = False) -> LearngeneVersion:
    """``ref`` is a version number or an alias (``latest``...); a deleted version is not found (``gone``: 410 with
    its tombstone)."""
    if ref.isascii() and ref.isdigit():
        number = parse_id(ref)
        v = repository.version(session, lg.id, number) if number is not None else None
    else:
        v = repository.version_by_alias(session, lg.id, ref) if ALIAS_RE.match(ref) else None
    if v is None:
        raise NotFound(f"learngene {lg.name!r} has no version {ref!r}")
    if v.deleted_at is not None:
        raise tombstone_error(f"learngene {lg.name!r} version {v.version}", v.deleted_by, v.deleted_at, v.sha256,
                              gone)
    return v


def set_alias(session: Session, name: str, alias: str, number: int, caller: Principal | None) -> LearngeneRow:
    """Point ``alias`` at version ``number``: for the learngene's owner and admins. ``latest`` is the service's."""
    lg = get_learngene(session, name, caller)
    check_may_change(caller, lg.owner, f"learngene {name!r}")
    _check_alias(alias)
    if alias == LATEST:
        raise InvalidRequest("latest is kept by the service on the newest version; pick another alias",
                             field="alias")
    v = repository.version(session, lg.id, number)
    if v is None or v.deleted_at is not None:
        raise NotFound(f"learngene {name!r} has no version {number}", field="version")
    repository.set_alias(session, lg.id, alias, v.id)
    session.flush()
    return lg


def delete_alias(session: Session, name: str, alias: str, caller: Principal | None) -> LearngeneRow:
    lg = get_learngene(session, name, caller)
    check_may_change(caller, lg.owner, f"learngene {name!r}")
    if alias == LATEST:
        raise Conflict("latest is kept by the service on the newest version; it cannot be removed")
    if not repository.delete_alias(session, lg.id, alias):
        raise NotFound(f"learngene {name!r} has no alias {alias!r}")
    return lg


def _check_alias(alias: str) -> None:
    if not ALIAS_RE.match(alias):
        raise InvalidRequest(f"alias {alias!r} must start with a lowercase letter, then 0-59 of lowercase letters, "
                             "digits, '.', '_' or '-'", field="alias")


def resolve(session: Session, reference: str, field: str = "learngene",
            caller: Principal | None = None) -> LearngeneVersion:
    """``name`` or ``name:version-or-alias`` to a version (every version is ready: one is registered only when
    its job succeeds)."""
    name, _, ref = reference.partition(":")
    check_name(name, field)
    lg = get_learngene(session, name, caller, field)
    return get_version(session, lg, ref or LATEST)


def learngene_outs(session: Session, rows: Sequence[LearngeneRow]) -> dict[int, LearngeneOut]:
    """API views of a page of learngenes, by id: two queries whatever the page size."""
    ids = [lg.id for lg in rows]
    counts = repository.version_counts(session, ids)
    aliases = repository.alias_targets(session, ids)
    return {
        lg.id: LearngeneOut(
            name=lg.name,
            method=lg.method,
            family=lg.family,
            description=lg.description,
            owner=lg.owner,
            visibility=lg.visibility,  # type: ignore[arg-type]
            created_at=lg.created_at,
            latest_version=aliases[lg.id].get(LATEST),
            version_count=counts.get(lg.id, 0),
            aliases=aliases[lg.id],
        )
        for lg in rows
    }


def learngene_out(session: Session, lg: LearngeneRow) -> LearngeneOut:
    return learngene_outs(session, [lg])[lg.id]


def version_outs(session: Session, rows: Sequence[LearngeneVersion],
                 caller: Principal | None = None) -> dict[int, LearngeneVersionOut]:
    """API views of a page of versions, by id: three queries whatever the page size (aliases, and the jobs and
    datasets of their lineage; the learngene and ancestries come from the session's identity map)."""
    aliases = repository.aliases_by_version(session, [v.id for v in rows])
    job_owners = repository.job_owners(session, [v.job_id for v in rows if v.job_id])
    datasets = repository.datasets(session, [i for v in rows if (i := _dataset_id(v.dataset)) is not None])

    def lineage(v: LearngeneVersion) -> Lineage:
        # A public learngene may come from a private ancestry, dataset or job: those links stay their owner's.
        ancestry = v.ancestry if v.ancestry and can_see(caller, v.ancestry.owner, v.ancestry.visibility) else None
        dataset_id = _dataset_id(v.dataset)
        dataset_seen = dataset_id is None or (
            (row := datasets.get(dataset_id)) is not None and can_see(caller, row.owner, row.visibility))
        job_seen = v.job_id in job_owners and can_see(caller, job_owners[v.job_id], PRIVATE)
        dataset_row = datasets.get(dataset_id) if dataset_id is not None and dataset_seen else None
        return Lineage(ancestry_id=ancestry.id if ancestry else None, ancestry_name=ancestry.name if ancestry else None,
                       dataset=v.dataset if dataset_seen else None, job_id=v.job_id if job_seen else None,
                       mode=v.mode, ancestry_deleted=_tombstone(ancestry), dataset_deleted=_tombstone(dataset_row))

    return {v.id: _version_out(v, aliases[v.id], lineage(v)) for v in rows}


def version_out(session: Session, v: LearngeneVersion, caller: Principal | None = None) -> LearngeneVersionOut:
    return version_outs(session, [v], caller)[v.id]


def _tombstone(row: Ancestry | DatasetRow | None) -> Tombstone | None:
    if row is None or row.deleted_at is None:
        return None
    return Tombstone(deleted_by=row.deleted_by, deleted_at=row.deleted_at, sha256=row.sha256)


def _dataset_id(uri: str | None) -> int | None:
    return parse_id(uri.removeprefix("dataset:")) if uri is not None and uri.startswith("dataset:") else None


def _version_out(v: LearngeneVersion, aliases: list[str], lineage: Lineage) -> LearngeneVersionOut:
    name = v.learngene.name
    return LearngeneVersionOut(
        learngene=name,
        version=v.version,
        method=v.method,
        aliases=aliases,
        lineage=lineage,
        hyperparams=v.hyperparams,
        metrics=v.metrics,
        meta=v.meta,
        sha256=v.sha256,
        size_bytes=v.size_bytes,
        created_at=v.created_at,
        tensors_url=f"/v1/learngenes/{name}/versions/{v.version}/tensors",
    )


def publish_version(
    session: Session,
    *,
    name: str,
    method: str,
    description: str,
    ancestry_id: int | None,
    job_id: str | None,
    dataset: str | None,
    mode: str | None,
    hyperparams: dict[str, Any],
    metrics: dict[str, Any],
    meta: dict[str, Any],
    sha256: str,
    size_bytes: int,
    storage_key: str,
    owner: str | None = None,
    visibility: str | None = None,
) -> LearngeneVersion:
    """Add a ready version (creating the learngene, owned by ``owner``, on first use) and point ``latest`` at it.
    ``owner`` is whom the learngene belonged to when the work was accepted: if it has another owner now (two
    owners raced for a new name), this version is refused. ``visibility`` None keeps the learngene's."""
    lg = repository.by_name(session, name)
    if lg is None:
        lg = LearngeneRow(name=name, method=method, description=description, owner=owner,
                          visibility=stored_visibility(owner, visibility or default_visibility(owner)))
        session.add(lg)
        session.flush()
    elif lg.owner != owner:
        raise Conflict(f"learngene {name!r} was published by another owner after this job was queued")
    if lg.deleted_at is not None:  # its owner publishes into it again: the name was kept for them
        lg.deleted_at = lg.deleted_by = None
    elif lg.method != method:
        raise InvalidRequest(f"learngene {name!r} holds method {lg.method!r}, not {method!r}", field="learngene")
    if visibility is not None:
        lg.visibility = stored_visibility(lg.owner, visibility)
    version = LearngeneVersion(
        learngene_id=lg.id,
        version=repository.max_version(session, lg.id) + 1,
        method=method,
        ancestry_id=ancestry_id,
        job_id=job_id,
        dataset=dataset,
        mode=mode,
        hyperparams=hyperparams,
        metrics=metrics,
        meta=meta,
        sha256=sha256,
        size_bytes=size_bytes,
        storage_key=storage_key,
    )
    session.add(version)
    session.flush()
    repository.set_alias(session, lg.id, LATEST, version.id)
    return version
