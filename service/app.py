"""The FastAPI application: the HTTP layer (error mapping, guard middleware, telemetry, docs, OpenAPI) around the
context and routers of the composition root (``service/wiring.py``). Imports no torch at module level: the
engine loads lazily in handlers and jobs."""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from service import telemetry, wiring
from service.context import AppContext
from service.deps import require_reader
from service.docs_ui import install_docs
from service.http_errors import install_error_handlers
from service.limits.counters import make_counters
from service.limits.middleware import GuardMiddleware
from service.openapi import install_openapi
from service.settings import Settings, get_settings

API_DESCRIPTION = """
Initialize vision transformers of any size from condensed **learngenes**.

Browse the registry of learngenes (versions, lineage, artifacts), follow jobs, and request descendants.
Every error has the shape `{"error": {"code", "message", "details": [{"field", "message"}]}}`.
"""

TAGS = [
    {"name": "learngenes", "description": "The registry of condensed learngenes and their versions."},
    {"name": "descendants", "description": "Initialized models of any size: request, download, inspect."},
    {"name": "ancestries", "description": "Source models (timm ViTs as safetensors) that learngenes are condensed from."},
    {"name": "condensing", "description": "Turn an ancestry into a new learngene version (a background job)."},
    {"name": "datasets", "description": "Uploaded ImageFolder archives for condensing."},
    {"name": "jobs", "description": "Background work (expansions, condensing): state, progress, cancellation."},
    {"name": "keys", "description": "API keys (admin): who may write, and the limits each caller gets."},
    {"name": "health", "description": "Liveness and readiness probes."},
]


def create_app(settings: Settings | None = None, ctx: AppContext | None = None) -> FastAPI:
    settings = settings or get_settings()
    owns_ctx = ctx is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if owns_ctx:
            app.state.ctx.close()
        if app.state.ctx.counters is not None:
            app.state.ctx.counters.close()

    app = FastAPI(
        title="Learngene Service",
        version="0.1.0",
        description=API_DESCRIPTION,
        openapi_tags=TAGS,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.ctx = ctx or wiring.build_context(settings)
    if app.state.ctx.counters is None:
        app.state.ctx.counters = make_counters(settings.broker_url)
    install_error_handlers(app)
    app.add_middleware(GuardMiddleware)
    telemetry.install(app)

    for router in wiring.OPEN_ROUTERS:
        app.include_router(router)
    for router in wiring.ROUTERS:
        app.include_router(router, dependencies=[Depends(require_reader)])

    install_docs(app, title="Learngene Service")
    install_openapi(app)
    return app
