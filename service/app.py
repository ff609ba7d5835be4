"""The FastAPI application. Imports no torch at module level: the engine loads lazily in handlers and jobs."""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.context import AppContext, build_context
from service.errors import install_error_handlers
from service.settings import Settings, get_settings

API_DESCRIPTION = """
Initialize vision transformers of any size from condensed **learngenes**.

Browse the registry of learngenes (versions, lineage, artifacts), follow jobs, and request descendants.
Every error has the shape `{"error": {"code", "message", "details": [{"field", "message"}]}}`.
"""

TAGS = [
    {"name": "learngenes", "description": "The registry of condensed learngenes and their versions."},
    {"name": "jobs", "description": "Background work (expansions, condensing): state, progress, cancellation."},
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

    app = FastAPI(
        title="Learngene Service",
        version="0.1.0",
        description=API_DESCRIPTION,
        openapi_tags=TAGS,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.ctx = ctx or build_context(settings)
    install_error_handlers(app)

    from service import health
    from service.jobs import endpoints as jobs
    from service.learngenes import endpoints as learngenes

    app.include_router(health.router)
    app.include_router(learngenes.router)
    app.include_router(jobs.router)

    try:
        from service.docs_ui import install_docs
    except ImportError:  # pragma: no cover - the offline docs module ships with the package
        pass
    else:
        install_docs(app, title="Learngene Service")
    return app
