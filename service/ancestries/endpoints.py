"""HTTP for ancestries: upload (safetensors only), browse."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile, status

from service.ancestries import service
from service.ancestries.schemas import AncestryOut
from service.bounds import IdPath
from service.deps import CtxDep, UowDep, Writer
from service.errors import InvalidRequest, PayloadTooLarge, error_responses
from service.files import spool_upload
from service.pagination import Page, PageParams, page_params, paginate

router = APIRouter(prefix="/v1/ancestries", tags=["ancestries"])


@router.post(
    "",
    operation_id="upload_ancestry",
    status_code=status.HTTP_201_CREATED,
    response_model=AncestryOut,
    responses=error_responses(401, 403, 411, 413, 422, 429),
)
def upload_ancestry(
    request: Request,
    ctx: CtxDep,
    uow: UowDep,
    caller: Writer,
    file: Annotated[UploadFile, File(description="The weights, as .safetensors (nothing else is accepted)")],
    architecture: Annotated[str, Form(max_length=200, description="timm architecture name")],
    model_args: Annotated[str, Form(description="JSON object of timm.create_model keyword arguments")] = "{}",
    name: Annotated[str, Form(max_length=200)] = "",
) -> AncestryOut:
    """Validated by building the timm model and loading the weights strictly; stored content-addressed."""
    declared = int(request.headers.get("content-length") or 0)
    if declared > ctx.settings.max_upload_bytes + 64 * 1024:
        raise PayloadTooLarge(f"upload exceeds {ctx.settings.max_upload_bytes} bytes", field="file")
    if not (file.filename or "").endswith(".safetensors"):
        raise InvalidRequest("only .safetensors weights are accepted", field="file")
    args = service.parse_model_args(model_args)
    path = spool_upload(ctx, file.file, ctx.settings.max_upload_bytes)
    row = service.register_upload(
        uow.session, ctx, path, name=name or (file.filename or "ancestry").removesuffix(".safetensors"),
        architecture=architecture, model_args=args, owner=caller.owner,
    )
    return AncestryOut.model_validate(row)


@router.get("", operation_id="list_ancestries", response_model=Page[AncestryOut], responses=error_responses(422))
def list_ancestries(uow: UowDep, page: Annotated[PageParams, Depends(page_params)]) -> Page[AncestryOut]:
    after = page.after_id()
    rows = service.list_page(uow.session, page.limit, after)
    return paginate(rows, page, AncestryOut.model_validate, lambda r: r.id)


@router.get("/{ancestry_id}", operation_id="get_ancestry", response_model=AncestryOut, responses=error_responses(404))
def get_ancestry(ancestry_id: IdPath, uow: UowDep) -> AncestryOut:
    return AncestryOut.model_validate(service.get_ancestry(uow.session, ancestry_id))
