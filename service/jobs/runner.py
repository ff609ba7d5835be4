"""The job kernel's runner: claim a job in the database, beat while it runs, record how it ended; and the
maintenance loop that requeues jobs whose worker died and publishes again jobs whose message was lost.

The same code runs inside Celery workers (``worker/`` is only the adapter) and in the API's in-process pool.
The database decides who runs a job: a claim succeeds only for a queued job or a running one whose worker
stopped beating, so a duplicate or redelivered message never runs a finished job twice. Imports no domain: the
kinds a process can run are in ``AppContext.kinds``, put there by the composition root (``service/wiring.py``).
"""
from __future__ import annotations

import contextvars
import datetime as dt
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any, Literal

from sqlalchemy import and_
from sqlalchemy.orm import Session

from service import logs
from service.context import AppContext
from service.jobs import repository
from service.jobs.kinds import JobCancelled, JobContext, JobFailed, JobKind
from service.jobs.service import end_job, forget_checkpoint, publish
from service.jobs.states import ERROR_JOB, ERROR_RECORDING, ERROR_UNKNOWN_KIND, ERROR_WORKER_LOST, FinalState
from service.models import Job, utcnow

log = logging.getLogger(__name__)

Outcome = Literal["succeeded", "failed", "cancelled", "busy", "skipped", "released"]

#: Longest a queued job waits between two publications of its message (the wait doubles up to this).
MAX_REPUBLISH_INTERVAL_S = 3600.0


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _stale_before(ctx: AppContext) -> dt.datetime:
    return utcnow() - dt.timedelta(seconds=ctx.settings.stale_after_s)


def user_message(exc: BaseException) -> str:
    """What a job's API shows of an unexpected exception: its type and first line, never a traceback."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:500]}" if text else type(exc).__name__


def gave_up_message(attempts: int) -> str:
    return f"gave up after {attempts} attempts: the worker running it was lost each time"


def run_job(ctx: AppContext, job_id: str) -> Outcome:
    me = worker_name()
    with ctx.sessions.begin() as session:
        claimed = repository.claim(session, job_id, me, _stale_before(ctx))
        job = repository.get(session, job_id)
        if job is None:
            log.warning("job %s does not exist; dropping its message", job_id)
            return "skipped"
        if not claimed:
            # Finished or cancelled: nothing to do. Running with a fresh heartbeat: someone holds it.
            return "busy" if job.state == "running" else "skipped"
        kind = ctx.kinds.get(job.kind)
        attempts, max_attempts, raw_kind, payload = job.attempts, job.max_attempts, job.kind, dict(job.payload)
        repository.add_event(session, job_id, "started", {"attempt": attempts, "worker": me})
        ending: tuple[str, str] | None = None
        if attempts > max_attempts:
            ending = gave_up_message(max_attempts), ERROR_WORKER_LOST
        elif kind is None:
            ending = f"no handler for job kind {raw_kind!r}", ERROR_UNKNOWN_KIND
        if ending is not None:
            end_job(session, ctx, job_id, "failed", only_if=repository.held_by(me), error=ending[0],
                    error_code=ending[1])
    if ending is not None:
        forget_checkpoint(ctx, job_id)
        return "failed"
    assert kind is not None
    with logs.job_context(job_id, raw_kind, attempts):
        log.info("job %s started (attempt %d of %d)", job_id, attempts, max_attempts)
        outcome = _run_claimed(ctx, job_id, me, kind, payload, attempts)
        log.info("job %s %s", job_id, outcome)
        return outcome


def _run_claimed(ctx: AppContext, job_id: str, me: str, kind: JobKind[Any], payload: dict[str, Any],
                 attempts: int) -> Outcome:
    raw_kind = kind.name
    jctx = JobContext(sessions=ctx.sessions, store=ctx.store, settings=ctx.settings, job_id=job_id, attempt=attempts,
                      _stopping=ctx.stopping)
    stop_beating = threading.Event()
    # The heartbeat thread runs in a copy of this context, so what it logs names the job too.
    beat = threading.Thread(target=contextvars.copy_context().run, args=(_beat, ctx, job_id, me, jctx, stop_beating),
                            daemon=True)
    beat.start()
    try:
        result = kind.run(jctx, kind.payload.model_validate(payload))
    except JobCancelled:
        if jctx.interrupted and _release(ctx, job_id, me):
            return "released"
        return _finish(ctx, job_id, me, "cancelled")
    except JobFailed as exc:
        return _finish(ctx, job_id, me, "failed", error=str(exc), error_code=exc.code)
    except Exception as exc:
        log.exception("job %s (%s) failed", job_id, raw_kind)
        return _finish(ctx, job_id, me, "failed", error=user_message(exc), error_code=ERROR_JOB)
    finally:
        stop_beating.set()
        beat.join()
    return _finish(ctx, job_id, me, "succeeded", result=result, on_success=jctx._on_success)


def _release(ctx: AppContext, job_id: str, me: str) -> bool:
    """The process stops: the job goes back to the queue with its checkpoint, for the next process (or the
    sweeper's next publication) to resume. False when it cannot (cancelled meanwhile, or no longer ours)."""
    try:
        with ctx.sessions.begin() as session:
            if not repository.release(session, job_id, me):
                return False
            repository.add_event(session, job_id, "released", {"worker": me, "reason": "the worker stopped"})
    except Exception:  # the database is gone too: the reaper requeues the job once its heartbeat is stale
        log.exception("job %s could not be handed back", job_id)
        return True
    log.warning("job %s handed back to the queue: this process is stopping", job_id)
    return True


class _NotHeld(Exception):
    """The job's row no longer allows this ending (taken over, or cancelled meanwhile)."""


def _finish(
    ctx: AppContext, job_id: str, me: str, state: FinalState, *, result: dict[str, Any] | None = None,
    error: str | None = None, error_code: str | None = None, on_success: list[Callable[[Session], None]] | None = None,
) -> Outcome:
    mine = repository.held_by(me)
    try:
        with ctx.sessions.begin() as session:
            # Success writes first (they may add to ``result``); an ending refused below rolls them back too.
            for write in on_success or []:
                write(session)
            # A success must not overwrite a cancellation requested while the job ran.
            only_if = and_(mine, Job.cancel_requested.is_(False)) if state == "succeeded" else mine
            if end_job(session, ctx, job_id, state, only_if=only_if, result=result, error=error,
                       error_code=error_code) is None:
                raise _NotHeld()
    except _NotHeld:
        if state == "succeeded":
            # Still ours but cancelled meanwhile: the cancellation wins and the result is dropped.
            return _finish(ctx, job_id, me, "cancelled")
        log.warning("job %s was taken over before it ended here; its %s is dropped", job_id, state)
        return "skipped"
    except Exception as exc:
        if state != "succeeded":
            raise
        log.exception("job %s could not record its success", job_id)
        return _finish(ctx, job_id, me, "failed", error=f"recording the result failed: {user_message(exc)}",
                       error_code=ERROR_RECORDING)
    forget_checkpoint(ctx, job_id)
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
    """The reaper: a running job whose worker stopped beating is requeued, or ended when it cannot run again
    (cancellation requested, or every attempt used). Returns the ids published again."""
    republished: list[str] = []
    stale_before = _stale_before(ctx)
    with ctx.sessions() as session:
        candidates = [(j.id, j.queue, j.cancel_requested, j.attempts, j.max_attempts)
                      for j in repository.stale_running(session, stale_before)]
    for job_id, queue, cancelled, attempts, max_attempts in candidates:
        stale = repository.stale(stale_before)
        requeued = False
        with ctx.sessions.begin() as session:
            if cancelled:
                ended = end_job(session, ctx, job_id, "cancelled", only_if=stale)
            elif attempts >= max_attempts:
                ended = end_job(session, ctx, job_id, "failed", only_if=stale, error=gave_up_message(max_attempts),
                                error_code=ERROR_WORKER_LOST)
            else:
                ended = None
                requeued = repository.requeue_if_stale(session, job_id, stale_before)
        if ended is not None:
            forget_checkpoint(ctx, job_id)
        if requeued:
            publish(ctx, job_id, queue)
            republished.append(job_id)
    return republished


def republish_lost(ctx: AppContext) -> list[str]:
    """The sweeper: queued jobs whose message may have been lost (a broker restarted without persistence, a
    publish that failed after commit) are published again. A duplicate message is harmless (the claim lets one
    run), but to keep them few, a job waits as long again as it already waited before each new publication
    (``republish_after_s``, then doubling, at most an hour). Returns the ids published."""
    now = utcnow()
    first = ctx.settings.republish_after_s
    with ctx.sessions() as session:
        candidates = [(j.id, j.queue, j.created_at, j.published_at)
                      for j in repository.queued_before(session, now - dt.timedelta(seconds=first))]
    published: list[str] = []
    for job_id, queue, created_at, published_at in candidates:
        wait = min(max(first, (published_at - created_at).total_seconds()), MAX_REPUBLISH_INTERVAL_S)
        if published_at > now - dt.timedelta(seconds=wait):
            continue
        with ctx.sessions.begin() as session:
            won = repository.mark_published(session, job_id, published_at, now)
        if won and publish(ctx, job_id, queue):
            published.append(job_id)
    return published


def start_maintenance(ctx: AppContext, stop: threading.Event) -> threading.Thread:
    """Reaper and sweeper, in a thread of every process that runs jobs."""
    def loop() -> None:
        while not stop.wait(max(0.5, min(ctx.settings.stale_after_s, ctx.settings.republish_after_s) / 3)):
            try:
                for job_id in requeue_stale(ctx):
                    log.warning("requeued orphaned job %s", job_id)
                for job_id in republish_lost(ctx):
                    log.warning("published queued job %s again (its message may have been lost)", job_id)
            except Exception:  # the database may be down: try again on the next tick
                log.exception("job maintenance pass failed")
            for chore in ctx.housekeeping:
                try:
                    chore(ctx)
                except Exception:
                    log.exception("housekeeping %s failed", getattr(chore, "__name__", chore))

    thread = threading.Thread(target=loop, name="lg-maintenance", daemon=True)
    thread.start()
    return thread
