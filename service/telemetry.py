"""What operators see of the HTTP side: one ASGI middleware per request (the request id, the caller's
X-Request-ID or a new one, echoed in the response and set for every log line; request metrics by route template;
one access log line), and ``GET /metrics``."""
from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import logs, metrics
from service.deps import MetricsReader
from service.http_errors import error_responses

log = logging.getLogger("learngene.http")

#: A caller's request id is kept only if it is short and plain (it ends up in logs and headers).
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: The methods metrics name; any other is counted as OTHER, so that made-up methods cannot add series (3,000
#: of them grew /metrics from 53 KB to 7.4 MB).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"


def _route(scope: Scope) -> str:
    """The matched route's template (``/v1/descendants/{descendant_id}``): bounded label values, whatever ids
    the paths carry."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


class RequestTelemetry:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        rid = given if _SAFE_ID.match(given) else uuid.uuid4().hex
        token = logs.request_id.set(rid)
        started = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "bytes": 0}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            elif message["type"] == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            method, route, status = scope["method"], _route(scope), str(state["status"])
            if method not in METHODS:
                method = OTHER
            metrics.HTTP_REQUESTS.labels(method, route, status).inc()
            metrics.HTTP_LATENCY.labels(method, route, status).observe(seconds)
            metrics.HTTP_BYTES.labels(method, route).inc(state["bytes"])
            client = scope.get("client")
            log.info("%s %s %s", method, scope["path"], status, extra={
                "method": method, "route": route, "path": scope["path"], "status": state["status"],
                "duration_ms": round(seconds * 1000, 2), "bytes": state["bytes"],
                "client": client[0] if client else None})
            logs.request_id.reset(token)


router = APIRouter(tags=["health"])


@router.get("/metrics", operation_id="metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}, "description": "Prometheus text"}}
            | error_responses(401, 403))
def get_metrics(request: Request, _: MetricsReader) -> Response:
    """Prometheus metrics: requests, latencies and bytes by route template and status, jobs by kind and final
    state, job durations, queue depth, descendants produced, cache hits, condensing throughput. With
    LEARNGENE_METRICS_ACCESS=admin (the default in production), only for an admin key."""
    return Response(metrics.exposition(request.app.state.ctx.sessions), media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI) -> None:
    app.add_middleware(RequestTelemetry)
    app.include_router(router)
