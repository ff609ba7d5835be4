"""The composition root: the one place that knows every part of the service and puts them together.

It reads the settings into an :class:`~service.context.AppContext` (database, storage, every domain's job kinds,
the dispatcher), lists the API's routers, and says how a process runs a job. The API (``service/app.py``), the
Celery adapter (``worker/``) and the command line (``service/cli.py``) call it; nothing below imports it, so the
domains and the job kernel never reach back up, and a new domain or job kind is added here and nowhere else.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

from service import health, hub
from service.ancestries import endpoints as ancestries
from service.condensing import endpoints as condensing
from service.condensing import tasks as condensing_tasks
from service.context import AppContext
from service.datasets import endpoints as datasets
from service.db import make_engine, make_sessionmaker
from service.descendants import endpoints as descendants
from service.descendants import cache as descendant_cache
from service.descendants import tasks as descendant_tasks
from service.jobs import endpoints as jobs
from service.jobs.dispatch import CeleryDispatcher, Dispatcher, InProcessDispatcher
from service.jobs.kinds import JobKind
from service.jobs.runner import Outcome, run_job
from service.keys import endpoints as keys
from service.learngenes import endpoints as learngenes
from service.registry import endpoints as registry
from service.registry import gc
from service.settings import Settings
from service.storage import make_store

#: Every domain's job kinds: what a process that runs jobs can run.
KINDS: tuple[JobKind[Any], ...] = (*descendant_tasks.KINDS, *condensing_tasks.KINDS)
#: What the maintenance loop of every process that runs jobs does besides reaping and sweeping jobs.
HOUSEKEEPING: tuple[Callable[[AppContext], object], ...] = (descendant_cache.enforce_budget, gc.sweep)
#: Routes open to everyone: the probes.
OPEN_ROUTERS: tuple[APIRouter, ...] = (health.router,)
#: Every domain's routes; each checks the caller's key when one is sent (or when reads need one), and writes
#: also check the write scope in their own dependency.
ROUTERS: tuple[APIRouter, ...] = (learngenes.router, descendants.router, ancestries.router, condensing.router,
                                  datasets.router, jobs.router, keys.router, registry.router, hub.router)


def build_context(settings: Settings, *, with_dispatcher: bool = True) -> AppContext:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    ctx = AppContext(
        settings=settings,
        engine=engine,
        sessions=make_sessionmaker(engine),
        store=make_store(settings),
        # A dict of its own per context: a test may add kinds to one process's context.
        kinds={kind.name: kind for kind in KINDS},
    )
    if with_dispatcher:
        ctx.dispatcher = make_dispatcher(ctx)
    ctx.housekeeping = HOUSEKEEPING
    return ctx


def make_dispatcher(ctx: AppContext) -> Dispatcher:
    if ctx.settings.uses_celery:
        return CeleryDispatcher(ctx.settings.broker_url)
    # The embedded default runs the very same job code a Celery worker runs, in this process.
    return InProcessDispatcher(job_runner(ctx), ctx.settings.inprocess_workers)


def job_runner(ctx: AppContext) -> Callable[[str], Outcome]:
    """How this process runs a job: the kernel's ``run_job``, once torch is set up for a process that runs jobs."""
    def run(job_id: str) -> Outcome:
        configure_torch(ctx.settings)
        return run_job(ctx, job_id)

    return run


_torch_configured = False


def configure_torch(settings: Settings) -> None:
    """Set torch's thread count once per process, just before the first job imports it (the API itself never
    imports torch at start)."""
    global _torch_configured
    if _torch_configured:
        return
    _torch_configured = True
    threads = settings.job_torch_threads(in_process=not settings.uses_celery)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
