"""HTTP for uploaded datasets (ImageFolder archives) used by condensing jobs."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile, status

from service.bounds import IdPath
from service.files import spool_upload
from service.datasets import service
from service.datasets.schemas import DatasetOut
from service.deps import CtxDep, UowDep, Writer
from service.errors import PayloadTooLarge
from service.http_errors import error_responses
from service.pagination import Page, PageParams, page_params, paginate

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post("", operation_id="upload_dataset", status_code=status.HTTP_201_CREATED, response_model=DatasetOut,
             responses=error_responses(401, 403, 411, 413, 422, 429))
def upload_dataset(
    request: Request,
    ctx: CtxDep,
    uow: UowDep,
    caller: Writer,
    file: Annotated[UploadFile, File(description="A .zip or .tar(.gz) of an ImageFolder: one folder per class")],
    name: Annotated[str, Form(max_length=200)] = "",
) -> DatasetOut:
    """Use the returned `uri` (`dataset:<id>`) as a condensing job's dataset."""
    if int(request.headers.get("content-length") or 0) > ctx.settings.max_upload_bytes + 64 * 1024:
        raise PayloadTooLarge(f"upload exceeds {ctx.settings.max_upload_bytes} bytes", field="file")
    path = spool_upload(ctx, file.file, ctx.settings.max_upload_bytes)
    row = service.register_upload(uow.session, ctx, path, name or (file.filename or "dataset"), owner=caller.owner)
    return DatasetOut.model_validate(row)


@router.get("", operation_id="list_datasets", response_model=Page[DatasetOut], responses=error_responses(422))
def list_datasets(uow: UowDep, page: Annotated[PageParams, Depends(page_params)]) -> Page[DatasetOut]:
    after = page.after_id()
    rows = service.list_page(uow.session, page.limit, after)
    return paginate(rows, page, DatasetOut.model_validate, lambda r: r.id)


@router.get("/{dataset_id}", operation_id="get_dataset", response_model=DatasetOut, responses=error_responses(404))
def get_dataset(dataset_id: IdPath, uow: UowDep) -> DatasetOut:
    return DatasetOut.model_validate(service.get_dataset(uow.session, dataset_id))
