"""Process-wide wiring: settings, database, storage and the job dispatcher, built once per process.

The API and the workers build the same context; only the dispatcher differs (Celery or in-process threads).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.db import make_engine, make_sessionmaker
from service.jobs.dispatch import CeleryDispatcher, Dispatcher, InProcessDispatcher
from service.limits.counters import Counters
from service.settings import Settings
from service.storage import ArtifactStore, make_store


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ArtifactStore
    dispatcher: Dispatcher | None = field(default=None)
    #: Rate-limit and quota counters; set by the API (``service.app``), None in workers.
    counters: Counters | None = field(default=None)

    def close(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.close()
        self.engine.dispose()


def build_context(settings: Settings, *, with_dispatcher: bool = True) -> AppContext:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    ctx = AppContext(
        settings=settings,
        engine=engine,
        sessions=make_sessionmaker(engine),
        store=make_store(settings),
    )
    if with_dispatcher:
        ctx.dispatcher = make_dispatcher(ctx)
    return ctx


def make_dispatcher(ctx: AppContext) -> Dispatcher:
    if ctx.settings.uses_celery:
        from worker.celery_app import make_celery

        return CeleryDispatcher(ctx.settings.broker_url, lambda url: make_celery(url, ctx.settings))
    # The embedded default runs the very same job code a Celery worker runs, in this process.
    from worker.runner import run_job

    return InProcessDispatcher(lambda job_id: run_job(ctx, job_id), ctx.settings.inprocess_workers)
