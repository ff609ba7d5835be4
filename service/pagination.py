"""Keyset pagination: ``{"items": [...], "next_page_token": ...}`` with an opaque token."""
from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from service.errors import InvalidRequest

T = TypeVar("T")
R = TypeVar("R")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_page_token: str | None = None


class PageParams(BaseModel):
    limit: int
    after: Any | None


def encode_token(after: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode().rstrip("=")


def decode_token(token: str) -> Any:
    try:
        padded = token + "=" * (-len(token) % 4)
        return json.loads(base64.urlsafe_b64decode(padded.encode()))["after"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest("malformed page_token", field="page_token") from exc


async def page_params(
    limit: Annotated[int, Query(ge=1, le=200, description="Items per page")] = 50,
    page_token: Annotated[str | None, Query(description="next_page_token of the previous page")] = None,
) -> PageParams:
    return PageParams(limit=limit, after=decode_token(page_token) if page_token else None)


def paginate(rows: Sequence[R], page: PageParams, to_item: Callable[[R], T], key: Callable[[R], Any]) -> Page[T]:
    """A page from ``rows`` fetched with ``limit + 1``: the extra row only says whether a next page exists."""
    items = [to_item(r) for r in rows[: page.limit]]
    token = encode_token(key(rows[page.limit - 1])) if len(rows) > page.limit else None
    return Page[T](items=items, next_page_token=token)
