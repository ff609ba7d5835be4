"""Process-wide wiring: settings, database, storage, the job kinds and the job dispatcher, built once per process.

The API and the workers build the same context; only the dispatcher differs (Celery or in-process threads).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.db import make_engine, make_sessionmaker
from service.jobs.dispatch import CeleryDispatcher, Dispatcher, InProcessDispatcher
from service.limits.counters import Counters
from service.settings import Settings
from service.storage import ArtifactStore, make_store

if TYPE_CHECKING:
    from service.jobs.kinds import JobKind


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ArtifactStore
    #: The job kinds this process can run, by name (every domain's, see ``service/job_kinds.py``).
    kinds: dict[str, JobKind[Any]] = field(default_factory=dict)
    dispatcher: Dispatcher | None = field(default=None)
    #: Rate-limit and quota counters; set by the API (``service.app``), None in workers.
    counters: Counters | None = field(default=None)

    def close(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.close()
        self.engine.dispose()


def build_context(settings: Settings, *, with_dispatcher: bool = True) -> AppContext:
    from service.job_kinds import all_kinds  # the domains import this module

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    ctx = AppContext(
        settings=settings,
        engine=engine,
        sessions=make_sessionmaker(engine),
        store=make_store(settings),
        kinds=all_kinds(),
    )
    if with_dispatcher:
        ctx.dispatcher = make_dispatcher(ctx)
    return ctx


def make_dispatcher(ctx: AppContext) -> Dispatcher:
    if ctx.settings.uses_celery:
        return CeleryDispatcher(ctx.settings.broker_url)
    # The embedded default runs the very same job code a Celery worker runs, in this process.
    from service.jobs.runner import run_job  # the runner needs this module

    return InProcessDispatcher(lambda job_id: run_job(ctx, job_id), ctx.settings.inprocess_workers)
