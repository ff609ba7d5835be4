"""What every request passes before any route sees it: who is asking (API key), their request rate, and the size
of the body, counted while it streams in.

Pure ASGI: nothing here buffers the body. A body past its cap is refused at ``Content-Length`` when given, and
otherwise as soon as the bytes received pass the cap, so a 2 GiB upload to a 1 MiB route costs 1 MiB.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.context import AppContext
from service.http_errors import ErrorBody, ErrorResponse, retry_after_header
from service.keys.auth import Principal, anonymous, authenticate, bearer_token

log = logging.getLogger(__name__)

#: Probes answer whatever the load: an orchestrator must see the process alive while it sheds a flood.
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz"})
#: Routes whose body is a file (their cap is LEARNGENE_MAX_UPLOAD_BYTES, plus room for the multipart framing).
UPLOAD_PATHS = frozenset({"/v1/ancestries", "/v1/datasets"})
MULTIPART_SLACK = 64 * 1024


async def _reply(send: Send, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(ErrorResponse(error=ErrorBody(code=code, message=message)).model_dump()).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def principal_of(scope: Scope) -> Principal | None:
    return scope.get("state", {}).get("principal")  # type: ignore[no-any-return]


class GuardMiddleware:
    """Authenticates the caller (stored in ``request.state.principal``), applies its rate limit, refuses
    bad URLs, and caps the body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        ctx: AppContext = scope["app"].state.ctx
        settings = ctx.settings
        headers = Headers(scope=scope)
        # NUL can be stored by no database column and PostgreSQL refuses it in any string it is sent.
        if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b""):
            await _reply(send, 400, "bad_request", "NUL characters are not allowed in URLs")
            return
        token = bearer_token(headers.get("authorization"))
        if token is None:
            principal = anonymous(settings)
        else:
            try:
                principal = await anyio.to_thread.run_sync(_authenticate, ctx, token)
            except Exception as exc:  # the registry is down: say so instead of a bare 500
                log.warning("could not authenticate, registry unavailable: %s", exc)
                await _reply(send, 503, "unavailable", "the registry is unavailable", retry_after_header(5))
                return
        scope.setdefault("state", {})["principal"] = principal
        if ctx.counters is not None:
            wait = await ctx.counters.take(principal.bucket, principal.limits.rate_per_s, principal.limits.burst)
            if wait > 0:
                await _reply(send, 429, "too_many_requests",
                             f"rate limit of {principal.limits.rate_per_s:g} requests/s "
                             f"(burst {principal.limits.burst}) reached", retry_after_header(wait))
                return

        is_upload = scope["method"] == "POST" and scope["path"] in UPLOAD_PATHS
        cap = settings.max_upload_bytes + MULTIPART_SLACK if is_upload else settings.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isascii() or not declared.isdigit():
                await _reply(send, 400, "bad_request", "Content-Length is not a number")
                return
            if int(declared) > cap:
                await _reply(send, 413, "payload_too_large", f"the body may be at most {cap} bytes")
                return
        elif is_upload and headers.get("transfer-encoding"):
            await _reply(send, 411, "length_required", "uploads must declare their Content-Length")
            return
        # The upload quota is charged by the upload routes, on the bytes they receive once the caller may write
        # (charged here, at Content-Length, ten connections that sent only headers spent a day's shared quota).
        await self.app(scope, _capped(receive, cap), send)


def _authenticate(ctx: AppContext, token: str) -> Principal:
    with ctx.sessions() as session:
        return authenticate(session, ctx.settings, token)


def _capped(receive: Receive, cap: int) -> Receive:
    """``receive`` that raises 413 once more than ``cap`` body bytes came in. FastAPI passes an HTTPException
    raised while it reads the body through to the error handlers (any other error becomes a 400)."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message: dict[str, Any] = dict(await receive())
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > cap:
                raise HTTPException(413, f"the body may be at most {cap} bytes")
        return message  # type: ignore[return-value]

    return wrapped
