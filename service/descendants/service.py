"""Business rules of descendants: resolve the source and the size, dedupe, queue the expansion."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.ancestries import service as ancestries
from service.context import AppContext
from service.db import UnitOfWork
from service.descendants import repository, sizing
from service.descendants.schemas import DescendantOut, DescendantRequest, DescendantSource
from service.errors import Conflict, Forbidden, InvalidRequest, NotFound
from service.descendants.tasks import EXPAND, ExpandPayload
from service.jobs import service as jobs
from service.keys.auth import Principal
from service.limits import quotas
from service.learngenes import service as learngenes
from service.metrics import counts_cache_lookups
from service.models import Ancestry, DescendantRow, Job, LearngeneVersion, utcnow
from service.ownership import PRIVATE, can_see, tombstone_error

#: Descendants are stored as float32: what a request will cost in bytes, known before it runs.
FLOAT32_BYTES = 4


@dataclass
class Source:
    """Where a descendant's weights come from: a learngene version, or an ancestry used directly."""

    method: str
    meta: dict[str, Any]
    version: LearngeneVersion | None = None
    ancestry: Ancestry | None = None

    @property
    def key(self) -> str:
        return f"lgv:{self.version.id}" if self.version else f"anc:{self.ancestry.id}"  # type: ignore[union-attr]


def resolve_source(session: Session, req: DescendantRequest, caller: Principal | None = None) -> Source:
    """The source, as far as ``caller`` may see it: another owner's private learngene or ancestry is not found."""
    if req.learngene is not None:
        version = learngenes.resolve(session, req.learngene, caller=caller)
        if req.method is not None and req.method != version.method:
            raise InvalidRequest(
                f"learngene {version.learngene.name!r} is a {version.method} learngene; leave method out "
                f"or ask for {version.method!r}",
                field="method",
            )
        return Source(method=version.method, meta=version.meta, version=version)
    assert req.ancestry is not None and req.method is not None
    ancestry = ancestries.get_ancestry(session, req.ancestry, field="ancestry", caller=caller)
    return Source(method=req.method, meta={"spec": ancestry.spec}, ancestry=ancestry)


def cache_key(source: Source, spec: dict[str, Any], seed: int, head: str = "inherit") -> str:
    request: dict[str, Any] = {"source": source.key, "method": source.method, "spec": spec, "seed": seed}
    if head != "inherit":  # the default stays out, so keys made before the choice existed still match
        request["head"] = head
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@counts_cache_lookups("descendants")
def request_descendant(uow: UnitOfWork, ctx: AppContext, req: DescendantRequest,
                       caller: Principal | None = None) -> tuple[DescendantRow, bool]:
    """The descendant for this request: the registered one when it exists, else a new row and its job.

    Identical requests racing each other meet at the unique cache key: one inserts, the others read its row,
    so the expansion runs once. A new expansion counts against the ``caller``'s job slots and daily descendant
    bytes (an existing descendant costs nothing; the bytes are recorded on the job, in this transaction, so a
    request that rolls back charges nothing, and an expansion that fails or is cancelled gives them back).
    Returns (row, created).
    """
    session = uow.session
    source = resolve_source(session, req, caller)
    plan = sizing.plan(ctx.settings, source.method, source.meta, req.spec, req.budget)
    key = cache_key(source, plan.spec, req.seed, req.head)
    existing = repository.by_cache_key(session, key)
    if existing is not None and existing.deleted_at is None:
        existing.last_used_at = utcnow()
    if existing is not None and not _needs_new_job(session, existing):
        return existing, False
    # Weights evicted from the descendant cache are made again, and must come out the same (their sha256 is
    # kept): the bytes were paid for once, so only a job slot is needed.
    regenerating = existing is not None and existing.status == "evicted" and existing.deleted_at is None
    charge = None
    if caller is not None:
        charge = quotas.admit(session, caller, None if regenerating else plan.param_count * FLOAT32_BYTES)
    if existing is not None:  # an earlier job failed, gave up or was cancelled, or the weights were evicted or
        row = existing       # deleted: try again with a new one
        if row.deleted_at is not None:  # asked for again after it was deleted: a new descendant in the old row
            row.deleted_at = row.deleted_by = None
            row.sha256 = row.size_bytes = row.storage_key = None
            row.pinned = False
            row.owner = caller.owner if caller else None
        row.status = "pending"
        row.last_used_at = utcnow()
    else:
        row = DescendantRow(
            cache_key=key,
            learngene_version_id=source.version.id if source.version else None,
            ancestry_id=source.ancestry.id if source.ancestry else None,
            method=source.method,
            spec=plan.spec,
            seed=req.seed,
            status="pending",
            param_count=plan.param_count,
            gflops=plan.gflops,
            details=plan.details,
            owner=caller.owner if caller else None,
            last_used_at=utcnow(),
        )
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:
            winner = repository.by_cache_key(session, key)
            if winner is None:
                raise
            return winner, False
    job = jobs.submit(uow, ctx, EXPAND, ExpandPayload(descendant_id=row.id, head=req.head),
                      owner=caller.owner if caller else None, charge=charge)
    row.job_id = job.id
    return row, True


def _needs_new_job(session: Session, row: DescendantRow) -> bool:
    if row.deleted_at is not None or row.status == "evicted":
        return True
    if row.status != "pending":
        return row.status == "failed"
    # Pending with a job that failed or was cancelled: rows left behind before job endings settled descendants.
    # Not one that succeeded (the row was read just before that success settled it: it is ready now), nor a row
    # without a job yet (SQLite commits the row's savepoint before its creator adds the job).
    job = session.get(Job, row.job_id) if row.job_id else None
    return job is not None and job.state in ("failed", "cancelled")


def get_descendant(session: Session, descendant_id: int, caller: Principal | None = None,
                   gone: bool = False) -> DescendantRow:
    """The descendant, when ``caller`` may see its source (a learngene or an ancestry): one made from another
    owner's private one is not found, its weights included. A deleted one is not found (``gone``: 410 with its
    tombstone)."""
    row = repository.get(session, descendant_id)
    if row is None or not _source_seen(session, row, caller):
        raise NotFound(f"descendant {descendant_id} not found")
    if row.deleted_at is not None:
        raise tombstone_error(f"descendant {descendant_id}", row.deleted_by, row.deleted_at, row.sha256, gone)
    return row


def _source_seen(session: Session, row: DescendantRow, caller: Principal | None) -> bool:
    if row.learngene_version_id is not None:
        version = session.get(LearngeneVersion, row.learngene_version_id)
        return version is not None and can_see(caller, version.learngene.owner, version.learngene.visibility)
    ancestry = session.get(Ancestry, row.ancestry_id) if row.ancestry_id is not None else None
    return ancestry is not None and can_see(caller, ancestry.owner, ancestry.visibility)


def get_ready(session: Session, descendant_id: int, caller: Principal | None = None) -> DescendantRow:
    row = get_descendant(session, descendant_id, caller)
    if row.status == "evicted":
        raise Conflict(f"descendant {descendant_id}'s weights were evicted from the descendant cache; its weights "
                       "route makes them again")
    if row.status != "ready" or row.storage_key is None:
        # 409, not 404: the descendant exists (its POST said so); its weights do not, yet or after a failure.
        raise Conflict(f"descendant {descendant_id} has no weights: it is {row.status}")
    return row


def check_may_manage(session: Session, row: DescendantRow, caller: Principal | None) -> None:
    """Pinning and deleting a descendant are for whoever asked for it first, its source's owner and admins;
    others who see it get 403."""
    if caller is None or caller.has("admin") or row.owner is None or caller.owner == row.owner:
        return
    version = session.get(LearngeneVersion, row.learngene_version_id) if row.learngene_version_id else None
    ancestry = session.get(Ancestry, row.ancestry_id) if row.ancestry_id is not None else None
    source_owner = version.learngene.owner if version else ancestry.owner if ancestry else None
    if caller.owner is not None and caller.owner == source_owner:
        return
    raise Forbidden(f"descendant {row.id} belongs to another owner")


def regenerate(uow: UnitOfWork, ctx: AppContext, row: DescendantRow, caller: Principal | None) -> Job:
    """Make an evicted descendant's weights again (its recorded sha256 is checked by the job); a job of the
    caller's, without charging bytes already paid for."""
    session = uow.session
    if caller is not None:
        quotas.admit(session, caller)
    previous = session.get(Job, row.job_id) if row.job_id else None
    head = (previous.payload or {}).get("head", "inherit") if previous is not None else "inherit"
    row.status = "pending"
    job = jobs.submit(uow, ctx, EXPAND, ExpandPayload(descendant_id=row.id, head=head),
                      owner=caller.owner if caller else None)
    row.job_id = job.id
    return job


def spec_slug(spec: dict[str, Any], seed: int) -> str:
    return (
        f"d{spec['depth']}-e{spec['embed_dim']}-h{spec['num_heads']}-r{spec['mlp_ratio']:g}"
        f"-c{spec['num_classes']}-s{seed}"
    )


_SLUG_PART = re.compile(r"^(?P<key>[dehrcs])(?P<value>\d+(?:\.\d+)?)$")
_SLUG_FIELDS = {"d": "depth", "e": "embed_dim", "h": "num_heads", "r": "mlp_ratio", "c": "num_classes"}


def parse_slug(slug: str) -> tuple[dict[str, Any], int]:
    """``d6-e64-h4-r4-c10-s0`` (any subset, any order) to a partial spec and a seed."""
    spec: dict[str, Any] = {}
    seed = 0
    for part in slug.split("-"):
        m = _SLUG_PART.match(part)
        if m is None:
            raise NotFound(f"repository name {slug!r} is not a descendant spec (e.g. d6-e64-h4-r4-c10-s0)")
        key, value = m["key"], m["value"]
        if key == "s":
            seed = int(value)
        elif key == "r":
            spec["mlp_ratio"] = float(value)
        else:
            spec[_SLUG_FIELDS[key]] = int(value)
    return spec, seed


def descendant_out(session: Session, row: DescendantRow, caller: Principal | None = None) -> DescendantOut:
    """The API view; its job (who asked for it first may not be the caller: identical requests share a row) is
    named only to whoever may see the job."""
    base = f"/v1/descendants/{row.id}"
    version = session.get(LearngeneVersion, row.learngene_version_id) if row.learngene_version_id else None
    job = session.get(Job, row.job_id) if row.job_id else None
    error = error_code = None
    if row.status == "failed" and job is not None:
        error, error_code = job.error or f"its job was {job.state}", job.error_code or job.state
    return DescendantOut(
        id=row.id,
        status=row.status,  # type: ignore[arg-type]
        source=DescendantSource(
            learngene=version.learngene.name if version else None,
            version=version.version if version else None,
            ancestry=row.ancestry_id,
        ),
        method=row.method,
        spec=row.spec,
        seed=row.seed,
        param_count=row.param_count,
        gflops=row.gflops,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        weights_url=f"{base}/weights",
        config_url=f"{base}/config",
        metadata_url=f"{base}/metadata",
        hub_repo_id=_hub_repo_id(row, version),
        job_id=row.job_id if job is not None and can_see(caller, job.owner, PRIVATE) else None,
        error=error,
        error_code=error_code,
        details=row.details,
        created_at=row.created_at,
        owner=row.owner,
        pinned=row.pinned,
        last_used_at=row.last_used_at,
    )


def _hub_repo_id(row: DescendantRow, version: LearngeneVersion | None) -> str:
    """The name ``/hub`` serves this descendant under (``service/hub.py`` parses it back)."""
    namespace = (
        f"{version.learngene.name}.v{version.version}" if version else f"ancestry-{row.ancestry_id}.{row.method}"
    )
    return f"{namespace}/{spec_slug(row.spec, row.seed)}"
