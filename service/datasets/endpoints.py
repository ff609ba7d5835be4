"""HTTP for uploaded datasets (ImageFolder archives) used by condensing jobs."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status
from starlette.concurrency import run_in_threadpool

from service.bounds import IdPath
from service.datasets import service
from service.datasets.schemas import DatasetOut
from service.deps import CtxDep, Reader, UowDep, Writer
from service.http_errors import error_responses
from service.pagination import Page, PageParams, page_params, paginate
from service.registry import deletion
from service.registry.schemas import DeletedOut
from service.uploads import multipart_body, receive_upload

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


#: The multipart body, fields in the order they must be sent: every field before the file.
UPLOAD_BODY = multipart_body({
    "name": {"type": "string", "maxLength": 200, "default": "", "description": "Default: the file's name"},
    "visibility": {"type": "string", "enum": ["private", "public"], "default": "private",
                   "description": "private: only its owner and admins see or condense from it; public: everyone"},
    "file": {"type": "string", "format": "binary", "description": "A .zip or .tar(.gz) of an ImageFolder: one "
             "folder per class. Last: after every field"},
}, required=["file"])


@router.post("", operation_id="upload_dataset", status_code=status.HTTP_201_CREATED, response_model=DatasetOut,
             responses=error_responses(401, 403, 411, 413, 422, 429), openapi_extra=UPLOAD_BODY)
async def upload_dataset(request: Request, ctx: CtxDep, uow: UowDep, caller: Writer) -> DatasetOut:
    """Multipart: the form fields, then the `file` part. Use the returned `uri` (`dataset:<id>`) as a condensing
    job's dataset."""
    received = await receive_upload(request, ctx, caller, service.check_upload_form,
                                    fields=frozenset(service.UPLOAD_FIELDS))
    name, visibility = received.checked
    row = await run_in_threadpool(service.register_upload, uow.session, ctx, received.path,
                                  name or received.filename or "dataset", owner=caller.owner, visibility=visibility,
                                  sha256=received.sha256)
    return DatasetOut.model_validate(row)


@router.get("", operation_id="list_datasets", response_model=Page[DatasetOut], responses=error_responses(422))
def list_datasets(uow: UowDep, caller: Reader, page: Annotated[PageParams, Depends(page_params)]) -> Page[DatasetOut]:
    """The datasets the caller may see: public ones, and private ones of their own (admins: all)."""
    after = page.after_id()
    rows = service.list_page(uow.session, page.limit, after, caller)
    return paginate(rows, page, DatasetOut.model_validate, lambda r: r.id)


@router.get("/{dataset_id}", operation_id="get_dataset", response_model=DatasetOut,
            responses=error_responses(404, 410))
def get_dataset(dataset_id: IdPath, uow: UowDep, caller: Reader) -> DatasetOut:
    return DatasetOut.model_validate(service.get_dataset(uow.session, dataset_id, caller=caller, gone=True))


@router.delete("/{dataset_id}", operation_id="delete_dataset", response_model=DeletedOut,
               responses=error_responses(401, 403, 404, 409))
def delete_dataset(dataset_id: IdPath, ctx: CtxDep, uow: UowDep, caller: Writer,
                   cascade: Annotated[bool, Query(description="Admins: delete it even though learngene versions "
                                                  "were condensed on it (their lineage names it as deleted)")]
                   = False) -> DeletedOut:
    """Delete an uploaded dataset and its archive (owner or admin). Learngene versions condensed on it refuse it
    (409 naming them) unless an admin says cascade=true. The row stays as a tombstone (410)."""
    return DeletedOut.model_validate(deletion.delete_dataset(uow, ctx, dataset_id, caller, cascade).summary())
