"""HTTP for descendants: ask for a size or a budget, get timm-loadable weights."""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.bounds import MAX_ID, IdPath, IdQuery
from service.context import AppContext
from service.db import unit_of_work
from service.deps import CtxDep, Reader, UowDep, Writer
from service.descendants import repository, service
from service.files import head_responses, safetensors_header, serve_blob
from service.descendants.schemas import DescendantOut, DescendantPatch, DescendantRequest, TensorInfo, WeightsMetadata
from service.errors import InvalidRequest, JobFailedError, Unavailable
from service.http_errors import error_response, error_responses
from service.jobs import waiting
from service.keys.auth import Principal
from service.learngenes import service as learngenes
from service.models import DescendantRow, utcnow
from service.registry import deletion
from service.registry.schemas import DeletedOut
from service.pagination import Page, PageParams, page_params, paginate

router = APIRouter(prefix="/v1/descendants", tags=["descendants"])


def is_settled(descendant_id: int) -> Callable[[Session], bool]:
    """Whether the descendant has left ``pending`` (or is gone)."""
    def settled(session: Session) -> bool:
        row = session.get(DescendantRow, descendant_id)
        return row is None or row.status != "pending"

    return settled


def _request(ctx: AppContext, body: DescendantRequest, caller: Principal) -> tuple[int, bool, bool]:
    with unit_of_work(ctx.sessions) as uow:
        row, created = service.request_descendant(uow, ctx, body, caller)
        descendant_id, was_ready = row.id, row.status == "ready"
    return descendant_id, created, was_ready  # committed, and the job published, by now


def _out(ctx: AppContext, descendant_id: int, caller: Principal) -> DescendantOut:
    with ctx.sessions() as session:
        return service.descendant_out(session, service.get_descendant(session, descendant_id, caller), caller)


@router.post(
    "",
    operation_id="create_descendant",
    response_model=DescendantOut,
    status_code=201,
    responses={
        200: {"model": DescendantOut, "description": "Already in the registry (same source, spec and seed)"},
        201: {"model": DescendantOut, "description": "Produced within `wait` seconds"},
        202: {"model": DescendantOut, "description": "Queued or still running: follow `job_id` or poll the descendant"},
    }
    | error_responses(401, 403, 404, 422, 429, 500),
)
async def create_descendant(
    body: DescendantRequest,
    ctx: CtxDep,
    caller: Writer,
    wait: Annotated[float | None, Query(ge=0, description="Seconds to wait for the weights (default from settings)")] = None,
) -> JSONResponse:
    """Expand a learngene (or use an ancestry directly) into a descendant of the requested size or budget.

    Everything is validated before any work is queued; identical requests share one computation. The wait
    holds no thread: it polls the registry from the event loop."""
    wait_s = ctx.settings.default_wait_s if wait is None else wait
    if wait_s > ctx.settings.max_wait_s:
        raise InvalidRequest(f"wait may be at most {ctx.settings.max_wait_s} s", field="wait")
    descendant_id, created, was_ready = await run_in_threadpool(_request, ctx, body, caller)
    if not was_ready and wait_s > 0:
        await waiting.wait_until(ctx, is_settled(descendant_id), wait_s)
    out = await run_in_threadpool(_out, ctx, descendant_id, caller)
    if out.status == "failed":
        raise JobFailedError(f"expanding descendant {descendant_id} failed: {out.error}; the same request retries")
    if was_ready and not created:
        code = 200
    else:
        code = 201 if out.status == "ready" else 202
    headers = {"location": f"/v1/descendants/{descendant_id}"}
    return JSONResponse(status_code=code, content=out.model_dump(mode="json"), headers=headers)


@router.get("", operation_id="list_descendants", response_model=Page[DescendantOut], responses=error_responses(404, 422))
def list_descendants(
    uow: UowDep,
    caller: Reader,
    page: Annotated[PageParams, Depends(page_params)],
    learngene: str | None = None,
    version: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    ancestry: IdQuery = None,
) -> Page[DescendantOut]:
    version_ids: list[int] | None = None
    if learngene is not None:
        lg = learngenes.get_learngene(uow.session, learngene, caller)
        version_ids = [v.id for v in lg.versions if version is None or v.version == version]
    elif version is not None:
        raise InvalidRequest("filtering by version needs a learngene", field="version")
    after = page.after_id()
    rows = repository.list_page(uow.session, page.limit, after, version_ids, ancestry, caller)
    return paginate(rows, page, lambda r: service.descendant_out(uow.session, r, caller), lambda r: r.id)


@router.get("/{descendant_id}", operation_id="get_descendant", response_model=DescendantOut,
            responses=error_responses(404, 410))
def get_descendant(descendant_id: IdPath, uow: UowDep, caller: Reader) -> DescendantOut:
    row = service.get_descendant(uow.session, descendant_id, caller, gone=True)
    row.last_used_at = utcnow()
    return service.descendant_out(uow.session, row, caller)


@router.patch("/{descendant_id}", operation_id="update_descendant", response_model=DescendantOut,
              responses=error_responses(401, 403, 404, 422))
def update_descendant(descendant_id: IdPath, body: DescendantPatch, uow: UowDep, caller: Writer) -> DescendantOut:
    """Pin a descendant (its weights are never evicted from the descendant cache) or unpin it: for whoever asked
    for it first, its source's owner and admins."""
    row = service.get_descendant(uow.session, descendant_id, caller)
    service.check_may_manage(uow.session, row, caller)
    row.pinned = body.pinned
    return service.descendant_out(uow.session, row, caller)


@router.delete("/{descendant_id}", operation_id="delete_descendant", response_model=DeletedOut,
               responses=error_responses(401, 403, 404, 409))
def delete_descendant(descendant_id: IdPath, ctx: CtxDep, uow: UowDep, caller: Writer) -> DeletedOut:
    """Delete a descendant and its weights (for whoever asked for it first, its source's owner and admins); its
    row stays as a tombstone (410). The same request later makes it anew."""
    return DeletedOut.model_validate(deletion.delete_descendant(uow, ctx, descendant_id, caller).summary())


@router.head("/{descendant_id}/weights", operation_id="head_descendant_weights", response_class=Response,
             responses=head_responses("model.safetensors") | error_responses(404, 409))
@router.get(
    "/{descendant_id}/weights",
    operation_id="download_descendant_weights",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "model.safetensors"},
        206: {"description": "The requested byte range"},
        304: {"description": "Not modified (If-None-Match matched the sha256 ETag)"},
    }
    | error_responses(404, 409, 416, 429, 503),
)
def download_weights(descendant_id: IdPath, request: Request, ctx: CtxDep, uow: UowDep, caller: Reader) -> Response:
    """``model.safetensors``: strong ETag = sha256, conditional GET, byte ranges (one past the end: 416; one that
    cannot be parsed is ignored: the whole file); HEAD gives its size and ETag. Weights evicted from the
    descendant cache are made again by a job (the same bytes: the recorded sha256 is checked) and this answers
    503 with Retry-After meanwhile."""
    row = service.get_descendant(uow.session, descendant_id, caller)
    if row.status == "evicted":
        job = service.regenerate(uow, ctx, row, caller)
        # Answered, not raised: the job must commit (and be published) with this request's unit of work.
        return error_response(503, Unavailable.code, f"descendant {descendant_id}'s weights were evicted from the "
                              f"descendant cache and are being made again (job {job.id}); try again shortly")
    if row.status == "pending" and row.sha256 is not None:  # made again after an eviction, not yet done
        return error_response(503, Unavailable.code, f"descendant {descendant_id}'s weights are being made again "
                              "after an eviction from the descendant cache; try again shortly")
    row = service.get_ready(uow.session, descendant_id, caller)
    row.last_used_at = utcnow()
    assert row.storage_key is not None and row.sha256 is not None
    return serve_blob(request, ctx, row.storage_key, row.sha256, filename="model.safetensors",
                      media_type="application/octet-stream")


@router.get("/{descendant_id}/config", operation_id="get_descendant_config", responses=error_responses(404, 409))
def get_config(descendant_id: IdPath, uow: UowDep, caller: Reader) -> JSONResponse:
    """timm ``config.json`` (architecture, num_classes, model_args, pretrained_cfg); kept when the weights are
    evicted."""
    row = service.get_descendant(uow.session, descendant_id, caller)
    if row.status != "evicted" or row.config is None:
        row = service.get_ready(uow.session, descendant_id, caller)
    return JSONResponse(row.config or {}, headers={"content-disposition": 'attachment; filename="config.json"'})


@router.get("/{descendant_id}/metadata", operation_id="get_descendant_metadata", response_model=WeightsMetadata,
            responses=error_responses(404, 409))
def get_metadata(descendant_id: IdPath, ctx: CtxDep, uow: UowDep, caller: Reader) -> WeightsMetadata:
    """Tensor names, shapes, dtypes and provenance from the safetensors header, without the weights."""
    row = service.get_ready(uow.session, descendant_id, caller)
    assert row.storage_key is not None
    header, n = safetensors_header(ctx, row.storage_key)
    meta = header.pop("__metadata__", {}) or {}
    tensors = {k: TensorInfo(dtype=v["dtype"], shape=v["shape"]) for k, v in sorted(header.items())}
    return WeightsMetadata(tensors=tensors, metadata=meta, header_bytes=n)
