"""HTTP for API keys (admin scope): create (the key is in the answer, once), list, revoke."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, status

from service.bounds import IdPath
from service.deps import Admin, UowDep
from service.errors import NotFound
from service.http_errors import error_responses
from service.keys import repository, service
from service.keys.auth import OWNER_PATTERN
from service.keys.schemas import KeyCreate, KeyCreated, KeyOut
from service.pagination import Page, PageParams, page_params, paginate

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.post("", operation_id="create_key", status_code=status.HTTP_201_CREATED, response_model=KeyCreated,
             responses=error_responses(401, 403, 422))
def create_key(body: KeyCreate, uow: UowDep, _: Admin) -> KeyCreated:
    """A new key for `owner`. Keep the `key` of the answer: only its hash is stored."""
    row, key = service.create_key(uow.session, body)
    return KeyCreated(**KeyOut.model_validate(row).model_dump(), key=key)


@router.get("", operation_id="list_keys", response_model=Page[KeyOut], responses=error_responses(401, 403, 422))
def list_keys(
    uow: UowDep, _: Admin, page: Annotated[PageParams, Depends(page_params)],
    owner: Annotated[str | None, Query(pattern=OWNER_PATTERN)] = None,
) -> Page[KeyOut]:
    rows = service.list_keys(uow.session, page.limit, page.after_id(), owner)
    return paginate(rows, page, KeyOut.model_validate, lambda r: r.id)


@router.post("/{key_id}/revoke", operation_id="revoke_key", response_model=KeyOut,
             responses=error_responses(401, 403, 404))
def revoke_key(key_id: IdPath, uow: UowDep, _: Admin) -> KeyOut:
    """Effective at once, on every API process (each request looks its key up)."""
    row = repository.get(uow.session, key_id)
    if row is None:
        raise NotFound(f"key {key_id} not found")
    return KeyOut.model_validate(service.revoke(uow.session, row))
