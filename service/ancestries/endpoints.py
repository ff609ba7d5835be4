"""HTTP for ancestries: upload (safetensors only), browse."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile, status

from service.ancestries import service
from service.ancestries.schemas import AncestryOut
from service.bounds import IdPath
from service.deps import CtxDep, UowDep, Writer
from service.errors import InvalidRequest, PayloadTooLarge
from service.files import spool_upload
from service.http_errors import error_responses
from service.pagination import Page, PageParams, page_params, paginate

router = APIRouter(prefix="/v1/ancestries", tags=["ancestries"])
#: A Hugging Face config.json is a few KiB; anything much larger is not one.
MAX_CONFIG_BYTES = 1024 * 1024


@router.post(
    "",
    operation_id="upload_ancestry",
    status_code=status.HTTP_201_CREATED,
    response_model=AncestryOut,
    responses={**error_responses(401, 403, 411, 413, 422, 429),
               200: {"description": "The same file with the same arguments: the existing ancestry",
                     "model": AncestryOut}},
)
def upload_ancestry(
    request: Request,
    response: Response,
    ctx: CtxDep,
    uow: UowDep,
    caller: Writer,
    file: Annotated[UploadFile, File(description="The weights, as .safetensors (nothing else is accepted): timm's "
                                                 "layout, or Hugging Face transformers' with `config`")],
    config: Annotated[UploadFile | None, File(description="The Hugging Face config.json of a transformers "
                                                          "ViT, DeiT or DINOv2 checkpoint; then no architecture")] = None,
    architecture: Annotated[str, Form(max_length=200, description="timm architecture name (not with config)")] = "",
    model_args: Annotated[str, Form(description="JSON object of timm.create_model keyword arguments, only the "
                                                "spec's fields (depth, embed_dim, init_values...)")] = "{}",
    mean: Annotated[str, Form(description="JSON list, one per input channel: the normalization the ancestry "
                                          "was trained with (default: its architecture's pretrained_cfg)")] = "",
    std: Annotated[str, Form(description="JSON list, one per input channel (with mean)")] = "",
    name: Annotated[str, Form(max_length=200)] = "",
) -> AncestryOut:
    """Validated by building the timm model and loading the weights strictly (after converting a Hugging Face
    layout); stored content-addressed. The same file with the same arguments answers 200 with its ancestry."""
    declared = int(request.headers.get("content-length") or 0)
    if declared > ctx.settings.max_upload_bytes + 64 * 1024:
        raise PayloadTooLarge(f"upload exceeds {ctx.settings.max_upload_bytes} bytes", field="file")
    if not (file.filename or "").endswith(".safetensors"):
        raise InvalidRequest("only .safetensors weights are accepted", field="file")
    args = service.parse_model_args(model_args)
    normalization = service.parse_normalization(mean, std)
    raw_config = config.file.read(MAX_CONFIG_BYTES + 1) if config is not None else None
    if raw_config is not None and len(raw_config) > MAX_CONFIG_BYTES:
        raise PayloadTooLarge(f"config exceeds {MAX_CONFIG_BYTES} bytes", field="config")
    hf_config = service.parse_hf_config(raw_config)
    if hf_config is None and not architecture:
        raise InvalidRequest("give the timm architecture, or the Hugging Face config.json as `config`",
                             field="architecture")
    path = spool_upload(ctx, file.file, ctx.settings.max_upload_bytes)
    row, created = service.register_upload(
        uow.session, ctx, path, name=name or (file.filename or "ancestry").removesuffix(".safetensors"),
        architecture=architecture, model_args=args, hf_config=hf_config, normalization=normalization,
        owner=caller.owner,
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return AncestryOut.model_validate(row)


@router.get("", operation_id="list_ancestries", response_model=Page[AncestryOut], responses=error_responses(422))
def list_ancestries(uow: UowDep, page: Annotated[PageParams, Depends(page_params)]) -> Page[AncestryOut]:
    after = page.after_id()
    rows = service.list_page(uow.session, page.limit, after)
    return paginate(rows, page, AncestryOut.model_validate, lambda r: r.id)


@router.get("/{ancestry_id}", operation_id="get_ancestry", response_model=AncestryOut, responses=error_responses(404))
def get_ancestry(ancestry_id: IdPath, uow: UowDep) -> AncestryOut:
    return AncestryOut.model_validate(service.get_ancestry(uow.session, ancestry_id))
