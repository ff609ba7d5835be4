"""HTTP for the registry as a whole: usage, and (admins) garbage collection."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.deps import Admin, CtxDep, Reader, UowDep
from service.http_errors import error_responses
from service.registry import gc, usage
from service.registry.schemas import GarbageOut, OrphanOut, UsageReport

router = APIRouter(prefix="/v1", tags=["registry"])


@router.get("/usage", operation_id="get_usage", response_model=UsageReport, responses=error_responses(403, 422))
def get_usage(ctx: CtxDep, uow: UowDep, caller: Reader,
              owner: Annotated[str | None, Query(max_length=100, description="Admins: one owner (default: every "
                                                 "owner)")] = None) -> UsageReport:
    """Bytes stored per kind, jobs by state, descendants produced and today's quotas left: the caller's own (an
    admin's: every owner's, or `owner`'s)."""
    return usage.report(uow.session, ctx, caller, owner)


def _garbage(found: gc.Collection, dry_run: bool) -> GarbageOut:
    return GarbageOut(dry_run=dry_run, orphans=[OrphanOut(key=b.key, size_bytes=b.size) for b in found.orphans],
                      orphan_bytes=found.orphan_bytes, removed=found.removed, scratch_files=len(found.scratch),
                      within_grace=found.young)


@router.get("/gc", operation_id="list_garbage", response_model=GarbageOut, responses=error_responses(401, 403))
def list_garbage(ctx: CtxDep, caller: Admin) -> GarbageOut:
    """Admins: blobs in storage that no row names and that are past the grace period (LEARNGENE_GC_GRACE_S), which
    the next collection removes. Nothing is removed."""
    return _garbage(gc.find_orphans(ctx), True)


@router.post("/gc", operation_id="collect_garbage", response_model=GarbageOut, responses=error_responses(401, 403))
def collect_garbage(ctx: CtxDep, caller: Admin) -> GarbageOut:
    """Admins: remove now what ``GET /v1/gc`` lists (the sweeper does it every LEARNGENE_GC_EVERY_S)."""
    return _garbage(gc.collect(ctx), False)
