"""FastAPI dependencies shared by every router."""
from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.context import AppContext
from service.db import UnitOfWork, unit_of_work
from service.errors import NotPermitted


# Dependencies that do no I/O are ``async def`` so that FastAPI runs them on the event loop: a plain ``def`` one
# costs a trip through the thread pool on every request.
async def get_ctx(request: Request) -> AppContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


CtxDep = Annotated[AppContext, Depends(get_ctx)]


def get_uow(ctx: CtxDep) -> Iterator[UnitOfWork]:
    """One transaction per request, committed right after the handler returns (scope="function"), before
    the response is sent; jobs registered with ``after_commit`` are published only then."""
    with unit_of_work(ctx.sessions) as uow:
        yield uow


UowDep = Annotated[UnitOfWork, Depends(get_uow, scope="function")]

_bearer = HTTPBearer(auto_error=False, description="Needed for writes when LEARNGENE_API_TOKEN is set")


async def require_writer(
    ctx: CtxDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    token = ctx.settings.api_token
    if not token:
        return
    if credentials is None or not secrets.compare_digest(credentials.credentials, token):
        raise NotPermitted("a valid bearer token is required for this operation")


WriterDep = Depends(require_writer)
