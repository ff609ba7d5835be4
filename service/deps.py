"""FastAPI dependencies shared by every router."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.context import AppContext
from service.db import UnitOfWork, unit_of_work
from service.errors import Forbidden, NotPermitted
from service.keys.auth import Principal, anonymous, keys_required
from service.limits.middleware import principal_of


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

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key (`learngene keys create`). Writes need one once LEARNGENE_API_TOKEN is set or any key "
    "exists; reads only when LEARNGENE_REQUIRE_KEY_FOR_READS is set.",
)


def _principal(request: Request, ctx: AppContext) -> Principal:
    # Authenticated once per request by the guard middleware (it needs the caller for the rate limit).
    return principal_of(request.scope) or anonymous(ctx.settings)


def _authorize(ctx: AppContext, caller: Principal, scope: str) -> Principal:
    if caller.has(scope):
        return caller
    with ctx.sessions() as session:
        required = keys_required(session, ctx.settings) or scope == "admin"
    if not required:
        return caller  # an open service: everyone may write, as nobody
    if caller.bad_token:
        raise NotPermitted("the bearer token is not a valid API key")
    if not caller.authenticated:
        raise NotPermitted(f"this operation needs an API key with the {scope} scope")
    raise Forbidden(f"this operation needs the {scope} scope; the key has {', '.join(sorted(caller.scopes))}")


def require_writer(
    request: Request, ctx: CtxDep, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    return _authorize(ctx, _principal(request, ctx), "write")


def require_admin(
    request: Request, ctx: CtxDep, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    return _authorize(ctx, _principal(request, ctx), "admin")


async def require_reader(
    request: Request, ctx: CtxDep, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """Reads are open unless LEARNGENE_REQUIRE_KEY_FOR_READS; a token that is sent must still be a valid key once
    keys are in use (a typo should not pass silently as anonymous)."""
    caller = _principal(request, ctx)
    if caller.has("read") or (not ctx.settings.require_key_for_reads and not caller.bad_token):
        return caller
    return await anyio.to_thread.run_sync(_authorize, ctx, caller, "read")


def require_metrics_reader(
    request: Request, ctx: CtxDep, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """``/metrics`` is open, or for admin keys only (LEARNGENE_METRICS_ACCESS): its labels name every route."""
    caller = _principal(request, ctx)
    return _authorize(ctx, caller, "admin") if ctx.settings.resolved_metrics_access == "admin" else caller


WriterDep = Depends(require_writer)
#: The caller of a write, for routes that record who owns what they create.
Writer = Annotated[Principal, Depends(require_writer)]
Admin = Annotated[Principal, Depends(require_admin)]
Reader = Annotated[Principal, Depends(require_reader)]
MetricsReader = Annotated[Principal, Depends(require_metrics_reader)]
