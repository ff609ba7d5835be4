"""Running one job: claim it in the database, beat while it runs, record how it ended.

The same function runs inside Celery workers and inside the API's in-process pool. The database decides who
runs a job: a claim succeeds only for a queued job or a running one whose worker stopped beating, so a
redelivered message never runs a finished job twice.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy.orm import Session

from service.context import AppContext
from service.jobs import repository
from service.models import Job, utcnow

log = logging.getLogger(__name__)

Outcome = Literal["succeeded", "failed", "cancelled", "busy", "skipped"]


class Cancelled(Exception):
    """Raised inside a handler when the job's cancellation was requested."""


class JobFailed(Exception):
    """A handler's way to fail a job with a message meant for the user (no traceback stored)."""


@dataclass
class JobContext:
    """What a handler sees: its payload, the stores, and the means to report, checkpoint and stop."""

    app: AppContext
    job_id: str
    payload: dict[str, Any]
    attempt: int
    _cancel: threading.Event = field(default_factory=threading.Event)
    #: Registry writes that must land together with the job's success, in the same transaction (so a job
    #: taken over by another worker can never publish twice).
    finalizers: list[Callable[[Session], None]] = field(default_factory=list)

    def progress(self, data: dict[str, Any], *, event: str = "progress") -> None:
        with self.app.sessions.begin() as session:
            repository.set_progress(session, self.job_id, data)
            repository.add_event(session, self.job_id, event, data)

    def should_stop(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise Cancelled()

    def save_checkpoint(self, data: bytes) -> None:
        key = self.app.store.put_named(f"checkpoints/{self.job_id}", data)
        with self.app.sessions.begin() as session:
            job = session.get(Job, self.job_id)
            assert job is not None
            job.checkpoint_key = key

    def load_checkpoint(self) -> bytes | None:
        return self.app.store.get_named(f"checkpoints/{self.job_id}")


Handler = Callable[[JobContext], dict[str, Any]]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _stale_before(ctx: AppContext) -> dt.datetime:
    return utcnow() - dt.timedelta(seconds=ctx.settings.stale_after_s)


torch_configured = False


def configure_torch(ctx: AppContext) -> None:
    """Set torch's thread count once per process, just before the first job imports it."""
    global torch_configured
    if torch_configured:
        return
    torch_configured = True
    threads = ctx.settings.job_torch_threads(in_process=not ctx.settings.uses_celery)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def run_job(ctx: AppContext, job_id: str) -> Outcome:
    from worker.handlers import HANDLERS

    me = worker_name()
    with ctx.sessions.begin() as session:
        claimed = repository.claim(session, job_id, me, _stale_before(ctx))
    with ctx.sessions() as session:
        job = repository.get(session, job_id)
        if job is None:
            log.warning("job %s does not exist; dropping its message", job_id)
            return "skipped"
        if not claimed:
            # Finished or cancelled: nothing to do. Running with a fresh heartbeat: someone holds it.
            return "busy" if job.state == "running" else "skipped"
        kind, payload, attempts, max_attempts = job.kind, dict(job.payload), job.attempts, job.max_attempts

    jctx = JobContext(app=ctx, job_id=job_id, payload=payload, attempt=attempts)
    with ctx.sessions.begin() as session:
        repository.add_event(session, job_id, "started", {"attempt": attempts, "worker": me})
    if attempts > max_attempts:
        _finish(ctx, job_id, me, "failed", error=f"gave up after {max_attempts} attempts (worker lost)")
        return "failed"
    configure_torch(ctx)
    stop_beating = threading.Event()
    beat = threading.Thread(target=_beat, args=(ctx, job_id, me, jctx, stop_beating), daemon=True)
    beat.start()
    try:
        handler = HANDLERS.get(kind)
        if handler is None:
            raise JobFailed(f"no handler for job kind {kind!r}")
        result = handler(jctx)
    except Cancelled:
        return _finish(ctx, job_id, me, "cancelled")
    except JobFailed as exc:
        return _finish(ctx, job_id, me, "failed", error=str(exc))
    except Exception as exc:
        log.exception("job %s failed", job_id)
        return _finish(ctx, job_id, me, "failed", error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")
    finally:
        stop_beating.set()
        beat.join()
    return _finish(ctx, job_id, me, "succeeded", result=result, finalizers=jctx.finalizers)


class _TakenOver(Exception):
    pass


def _finish(
    ctx: AppContext, job_id: str, me: str, state: Outcome, *, result: dict[str, Any] | None = None,
    error: str | None = None, finalizers: list[Callable[[Session], None]] | None = None,
) -> Outcome:
    try:
        with ctx.sessions.begin() as session:
            # Finalizers first (they may add to ``result``); a lost claim rolls their writes back too.
            for finalize in finalizers or []:
                finalize(session)
            if not repository.finish(session, job_id, me, state, result=result, error=error):
                raise _TakenOver()
            event = {"state": state, **({"error": error.splitlines()[0]} if error else {})}
            repository.add_event(session, job_id, "state", event)
    except _TakenOver:
        log.warning("job %s was taken over before it finished here; result dropped", job_id)
        return "skipped"
    except Exception as exc:
        if state != "succeeded":
            raise
        log.exception("job %s could not record its success", job_id)
        return _finish(ctx, job_id, me, "failed", error=f"recording the result failed: {type(exc).__name__}: {exc}")
    return state


def _beat(ctx: AppContext, job_id: str, me: str, jctx: JobContext, stop: threading.Event) -> None:
    while not stop.wait(ctx.settings.heartbeat_interval_s):
        try:
            with ctx.sessions.begin() as session:
                if repository.heartbeat(session, job_id, me):
                    jctx._cancel.set()
        except Exception:  # a missed beat is retried on the next tick
            log.exception("heartbeat of job %s failed", job_id)


def requeue_stale(ctx: AppContext) -> list[str]:
    """Give jobs whose worker died back to the queue (the reaper). Returns the ids republished."""
    republished: list[str] = []
    stale_before = _stale_before(ctx)
    with ctx.sessions() as session:
        candidates = [(j.id, j.queue) for j in repository.stale_running(session, stale_before)]
    for job_id, queue in candidates:
        with ctx.sessions.begin() as session:
            taken = repository.requeue_if_stale(session, job_id, stale_before)
        if taken and ctx.dispatcher is not None:
            ctx.dispatcher.publish(job_id, queue)
            republished.append(job_id)
    return republished


def start_reaper(ctx: AppContext, stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(max(1.0, ctx.settings.stale_after_s / 3)):
            try:
                for job_id in requeue_stale(ctx):
                    log.warning("requeued orphaned job %s", job_id)
            except Exception:
                log.exception("reaper pass failed")

    thread = threading.Thread(target=loop, name="lg-reaper", daemon=True)
    thread.start()
    return thread
