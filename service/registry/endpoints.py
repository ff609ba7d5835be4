"""HTTP for the registry as a whole: usage, and (admins) garbage collection."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.deps import CtxDep, Reader, UowDep
from service.http_errors import error_responses
from service.registry import usage
from service.registry.schemas import UsageReport

router = APIRouter(prefix="/v1", tags=["registry"])


@router.get("/usage", operation_id="get_usage", response_model=UsageReport, responses=error_responses(403, 422))
def get_usage(ctx: CtxDep, uow: UowDep, caller: Reader,
              owner: Annotated[str | None, Query(max_length=100, description="Admins: one owner (default: every "
                                                 "owner)")] = None) -> UsageReport:
    """Bytes stored per kind, jobs by state, descendants produced and today's quotas left: the caller's own (an
    admin's: every owner's, or `owner`'s)."""
    return usage.report(uow.session, ctx, caller, owner)
