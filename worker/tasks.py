"""The Celery adapter: one task that hands a job id to the kernel, and the signals that wire a worker process.
A task carries only a job id; the job row holds everything else."""
from __future__ import annotations

import threading

from celery import Task
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from service.context import AppContext
from service.jobs.dispatch import TASK_RUN_JOB
from service.jobs.runner import start_maintenance
from service.settings import get_settings
from service.wiring import build_context, job_runner
from worker.celery_app import make_celery

settings = get_settings()
app = make_celery(settings.broker_url or "redis://127.0.0.1:6379/0", settings)

_ctx: AppContext | None = None
_maintenance_stop = threading.Event()


def worker_context() -> AppContext:
    """Built lazily in the process that runs tasks, after any fork: no database connection or CUDA context
    is ever inherited across a fork."""
    global _ctx
    if _ctx is None:
        _ctx = build_context(get_settings())
    return _ctx


@worker_process_init.connect
def _reset_after_fork(**_: object) -> None:
    global _ctx
    if _ctx is not None:
        # Leave the parent's pooled connections alone: closing them here would close the parent's sockets.
        _ctx.engine.dispose(close=False)
    _ctx = None


@worker_ready.connect
def _start_maintenance(**_: object) -> None:
    start_maintenance(worker_context(), _maintenance_stop)


@worker_shutdown.connect
def _stop_maintenance(**_: object) -> None:
    _maintenance_stop.set()


@app.task(name=TASK_RUN_JOB, bind=True)
def run_job_task(self: Task, job_id: str) -> str:
    outcome = job_runner(worker_context())(job_id)
    if outcome == "busy":
        # Another worker holds the job and is alive; look again once it would count as stale.
        raise self.retry(countdown=get_settings().stale_after_s, max_retries=None)
    return outcome
