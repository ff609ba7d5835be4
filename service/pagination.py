"""Keyset pagination: ``{"items": [...], "next_page_token": ...}`` with an opaque token."""
from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from service.bounds import MAX_ID
from service.errors import InvalidRequest

T = TypeVar("T")
R = TypeVar("R")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_page_token: str | None = None


class PageParams(BaseModel):
    limit: int
    after: Any | None

    def after_id(self) -> int | None:
        """The token's position as an id (routes ordered by id or version number)."""
        if self.after is None:
            return None
        if type(self.after) is not int or not 0 <= self.after <= MAX_ID:  # bool is an int too: exact type
            raise InvalidRequest("page_token is not one this route issued", field="page_token")
        return self.after

    def after_text(self, max_length: int = 200) -> str | None:
        """The token's position as a name or id string (routes ordered by name, jobs by id)."""
        if self.after is None:
            return None
        if not isinstance(self.after, str) or len(self.after) > max_length or "\x00" in self.after:
            raise InvalidRequest("page_token is not one this route issued", field="page_token")
        return self.after


def encode_token(after: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode().rstrip("=")


def decode_token(token: str) -> Any:
    try:
        padded = token + "=" * (-len(token) % 4)
        return json.loads(base64.urlsafe_b64decode(padded.encode()))["after"]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise InvalidRequest("malformed page_token", field="page_token") from exc


async def page_params(
    limit: Annotated[int, Query(ge=1, le=200, description="Items per page")] = 50,
    page_token: Annotated[str | None, Query(max_length=1000, description="next_page_token of the previous page")] = None,
) -> PageParams:
    return PageParams(limit=limit, after=decode_token(page_token) if page_token else None)


def paginate(rows: Sequence[R], page: PageParams, to_item: Callable[[R], T], key: Callable[[R], Any]) -> Page[T]:
    """A page from ``rows`` fetched with ``limit + 1``: the extra row only says whether a next page exists."""
    items = [to_item(r) for r in rows[: page.limit]]
    token = encode_token(key(rows[page.limit - 1])) if len(rows) > page.limit else None
    return Page[T](items=items, next_page_token=token)
