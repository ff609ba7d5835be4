"""HTTP for ancestries: upload (safetensors only), browse."""
from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from service.ancestries import service
from service.ancestries.schemas import AncestryOut
from service.bounds import IdPath
from service.deps import CtxDep, Reader, UowDep, Writer
from service.http_errors import error_responses
from service.uploads import multipart_body, receive_upload
from service.pagination import Page, PageParams, page_params, paginate
from service.registry import deletion
from service.registry.schemas import DeletedOut

router = APIRouter(prefix="/v1/ancestries", tags=["ancestries"])

_TEXT = {"type": "string"}
#: The multipart body, fields in the order they must be sent: every field before the file.
UPLOAD_BODY = multipart_body({
    "name": {**_TEXT, "maxLength": 200, "default": "", "description": "Default: the file's name"},
    "visibility": {"type": "string", "enum": ["private", "public"], "default": "private",
                   "description": "private: only its owner and admins see or use it; public: everyone"},
    "architecture": {**_TEXT, "maxLength": 200, "default": "", "description": "timm architecture name (not with "
                     "config)"},
    "model_args": {**_TEXT, "default": "{}", "description": "JSON object of timm.create_model keyword arguments, "
                   "only the spec's fields (depth, embed_dim, init_values...)"},
    "mean": {**_TEXT, "default": "", "description": "JSON list, one per input channel: the normalization the "
             "ancestry was trained with (default: its architecture's pretrained_cfg)"},
    "std": {**_TEXT, "default": "", "description": "JSON list, one per input channel (with mean)"},
    "config": {**_TEXT, "format": "binary", "description": "The Hugging Face config.json of a transformers ViT, "
               "DeiT or DINOv2 checkpoint, or a timm Hub snapshot's; then no architecture"},
    "file": {**_TEXT, "format": "binary", "description": "The weights, as .safetensors (nothing else is "
             "accepted): timm's layout, or Hugging Face transformers' with `config`. Last: after every field"},
}, required=["file"])


@router.post(
    "",
    operation_id="upload_ancestry",
    status_code=status.HTTP_201_CREATED,
    response_model=AncestryOut,
    responses={**error_responses(401, 403, 411, 413, 422, 429),
               200: {"description": "The same file with the same arguments: the existing ancestry",
                     "model": AncestryOut}},
    openapi_extra=UPLOAD_BODY,
)
async def upload_ancestry(request: Request, response: Response, ctx: CtxDep, uow: UowDep,
                          caller: Writer) -> AncestryOut:
    """Multipart: the form fields, then the `file` part (a field after it is refused). The fields are checked
    before a byte of the file is stored; the weights are then validated by building the timm model and loading
    them strictly (after converting a Hugging Face layout), and stored content-addressed. The same file with the
    same arguments answers 200 with its ancestry."""
    received = await receive_upload(
        request, ctx, caller, partial(service.check_upload_form, ctx), fields=frozenset(service.UPLOAD_FIELDS),
        file_parts=frozenset({"config"}), max_file_part_bytes=service.MAX_CONFIG_BYTES)
    form = received.checked
    row, created = await run_in_threadpool(
        service.register_upload, uow.session, ctx, received.path, name=form.name, architecture=form.architecture,
        model_args=form.model_args, hf_config=form.hf_config, normalization=form.normalization,
        owner=caller.owner, visibility=form.visibility, sha256=received.sha256)
    if not created:
        response.status_code = status.HTTP_200_OK
    return AncestryOut.model_validate(row)


@router.get("", operation_id="list_ancestries", response_model=Page[AncestryOut], responses=error_responses(422))
def list_ancestries(uow: UowDep, caller: Reader,
                    page: Annotated[PageParams, Depends(page_params)]) -> Page[AncestryOut]:
    """The ancestries the caller may see: public ones, and private ones of their own (admins: all)."""
    after = page.after_id()
    rows = service.list_page(uow.session, page.limit, after, caller)
    return paginate(rows, page, AncestryOut.model_validate, lambda r: r.id)


@router.get("/{ancestry_id}", operation_id="get_ancestry", response_model=AncestryOut,
            responses=error_responses(404, 410))
def get_ancestry(ancestry_id: IdPath, uow: UowDep, caller: Reader) -> AncestryOut:
    return AncestryOut.model_validate(service.get_ancestry(uow.session, ancestry_id, caller=caller, gone=True))


@router.delete("/{ancestry_id}", operation_id="delete_ancestry", response_model=DeletedOut,
               responses=error_responses(401, 403, 404, 409))
def delete_ancestry(ancestry_id: IdPath, ctx: CtxDep, uow: UowDep, caller: Writer,
                    cascade: Annotated[bool, Query(description="Admins: delete it even though learngene versions "
                                                   "were condensed from it (their lineage names it as deleted)")]
                    = False) -> DeletedOut:
    """Delete an ancestry and its weights (owner or admin), with the descendants made directly from it. Learngene
    versions condensed from it refuse it (409 naming them) unless an admin says cascade=true. The row stays as a
    tombstone (410)."""
    return DeletedOut.model_validate(deletion.delete_ancestry(uow, ctx, ancestry_id, caller, cascade).summary())
