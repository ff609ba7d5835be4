"""The job lifecycle on both databases: claim once, publish after commit, cancel, reap orphans."""
from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlalchemy.orm import Session

from service.context import AppContext
from service.db import unit_of_work
from service.jobs import repository
from service.jobs.kinds import JobContext, JobKind
from service.jobs.runner import requeue_stale, run_job
from service.jobs.service import request_cancel, submit
from service.jobs.states import FinalState
from service.models import Job, utcnow
from tests.support import wait_until


class Numbers(BaseModel):
    n: int


def _sum_squares(jctx: JobContext, p: Numbers) -> dict[str, Any]:
    jctx.progress({"step": p.n, "total_steps": p.n})
    if p.n < 0:
        raise ValueError(f"cannot sum {p.n} squares")
    return {"value": sum(i * i for i in range(p.n))}


def _wait_for_cancel(jctx: JobContext, p: Numbers) -> dict[str, Any]:
    started.set()
    for _ in range(400):
        jctx.check_cancelled()
        threading.Event().wait(0.05)
    return {"value": "not cancelled"}


started = threading.Event()
#: (job id, final state) of every ``on_finished`` call, in order.
endings: list[tuple[str, str]] = []


def _record_ending(session: Session, job: Job, state: FinalState) -> None:
    endings.append((job.id, state))


SUM_SQUARES = JobKind(name="sum-squares", payload=Numbers, run=_sum_squares, queue=lambda _: "cpu",
                      on_finished=_record_ending)
WAIT_FOR_CANCEL = JobKind(name="wait-for-cancel", payload=Numbers, run=_wait_for_cancel, queue=lambda _: "cpu",
                          on_finished=_record_ending)


@pytest.fixture(autouse=True)
def test_kinds(ctx: AppContext) -> Iterator[None]:
    ctx.kinds |= {SUM_SQUARES.name: SUM_SQUARES, WAIT_FOR_CANCEL.name: WAIT_FOR_CANCEL}
    endings.clear()
    yield


def _new_job(ctx: AppContext, kind: JobKind[Any], n: int = 0) -> str:
    with unit_of_work(ctx.sessions) as uow:
        return submit(uow, ctx, kind, Numbers(n=n)).id


def _job(ctx: AppContext, job_id: str) -> Job:
    with ctx.sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def test_a_job_runs_once_and_its_result_is_visible_over_http(ctx: AppContext, client: TestClient) -> None:
    job_id = _new_job(ctx, SUM_SQUARES, 10)
    wait_until(lambda: _job(ctx, job_id).state == "succeeded", 30, what="the in-process worker")
    body = client.get(f"/v1/jobs/{job_id}").json()
    assert body["result"] == {"value": 285}
    assert body["attempts"] == 1 and body["progress"] == {"step": 10, "total_steps": 10}
    # A redelivered message for a finished job does nothing.
    assert run_job(ctx, job_id) == "skipped"
    assert _job(ctx, job_id).attempts == 1
    assert endings == [(job_id, "succeeded")]


def test_jobs_are_published_only_after_commit(ctx: AppContext) -> None:
    published: list[str] = []
    ctx.dispatcher = _Recorder(published)
    with pytest.raises(RuntimeError):
        with unit_of_work(ctx.sessions) as uow:
            submit(uow, ctx, SUM_SQUARES, Numbers(n=1))
            assert published == []
            raise RuntimeError("rolled back")
    assert published == []
    with unit_of_work(ctx.sessions) as uow:
        job = submit(uow, ctx, SUM_SQUARES, Numbers(n=1))
        assert published == []
    assert published == [job.id]


class _Recorder:
    def __init__(self, out: list[str]) -> None:
        self.out = out

    def publish(self, job_id: str, queue: str) -> None:
        self.out.append(job_id)

    def ping(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_concurrent_claims_have_exactly_one_winner(ctx: AppContext) -> None:
    ctx.dispatcher = _Recorder([])
    job_id = _new_job(ctx, SUM_SQUARES, 3)
    wins: list[bool] = []
    barrier = threading.Barrier(4)

    def claim() -> None:
        barrier.wait()
        with ctx.sessions.begin() as s:
            wins.append(repository.claim(s, job_id, f"w{threading.get_ident()}", utcnow() - dt.timedelta(seconds=60)))

    threads = [threading.Thread(target=claim) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(wins) == [False, False, False, True]


def test_cancelling_a_queued_job_means_it_never_runs(ctx: AppContext, client: TestClient) -> None:
    ctx.dispatcher = _Recorder([])
    job_id = _new_job(ctx, SUM_SQUARES, 3)
    r = client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert run_job(ctx, job_id) == "skipped"
    assert _job(ctx, job_id).result is None
    assert endings == [(job_id, "cancelled")]
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409


def test_cancelling_a_running_job_stops_it_at_the_next_step(ctx: AppContext) -> None:
    started.clear()
    ctx.dispatcher = _Recorder([])
    job_id = _new_job(ctx, WAIT_FOR_CANCEL)
    outcome: list[str] = []
    t = threading.Thread(target=lambda: outcome.append(run_job(ctx, job_id)))
    t.start()
    assert started.wait(10)
    with unit_of_work(ctx.sessions) as uow:
        assert request_cancel(uow, ctx, job_id).cancel_requested
    t.join(30)
    assert outcome == ["cancelled"]
    assert _job(ctx, job_id).state == "cancelled" and endings == [(job_id, "cancelled")]


def test_orphaned_running_job_is_requeued_and_finishes_once(ctx: AppContext) -> None:
    published: list[str] = []
    ctx.dispatcher = _Recorder(published)
    job_id = _new_job(ctx, SUM_SQUARES, 4)
    published.clear()
    # A worker claimed it, then died: its heartbeat stops.
    with ctx.sessions.begin() as s:
        assert repository.claim(s, job_id, "dead-worker", utcnow())
    assert run_job(ctx, job_id) == "busy"  # fresh heartbeat: someone holds it
    assert requeue_stale(ctx) == []
    with ctx.sessions.begin() as s:
        s.get(Job, job_id).heartbeat_at = utcnow() - dt.timedelta(seconds=ctx.settings.stale_after_s + 1)  # type: ignore[union-attr]
    assert requeue_stale(ctx) == [job_id]
    assert published == [job_id]
    assert run_job(ctx, job_id) == "succeeded"
    job = _job(ctx, job_id)
    assert job.attempts == 2 and job.result == {"value": 14}
    # The dead worker cannot overwrite the outcome if it comes back.
    with ctx.sessions.begin() as s:
        assert not repository.end(s, job_id, repository.held_by("dead-worker"), "failed", result=None,
                                  error="late", error_code=None)
    assert _job(ctx, job_id).state == "succeeded"


def test_a_handler_error_fails_the_job_with_a_message_and_a_code_and_no_traceback(
    ctx: AppContext, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = _new_job(ctx, SUM_SQUARES, -3)
    wait_until(lambda: _job(ctx, job_id).state == "failed", 30, what="the job to fail")
    body = client.get(f"/v1/jobs/{job_id}").json()
    assert body["error"] == "ValueError: cannot sum -3 squares" and body["error_code"] == "job_error"
    assert endings == [(job_id, "failed")]
    # The traceback went to the log, with the job's id.
    logged = [r for r in caplog.records if job_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None


def test_a_payload_of_the_wrong_type_is_refused_at_submission(ctx: AppContext) -> None:
    with pytest.raises(TypeError, match="takes a Numbers"):
        with unit_of_work(ctx.sessions) as uow:
            submit(uow, ctx, SUM_SQUARES, Job())  # type: ignore[arg-type]


def test_job_events_stream_ends_with_final_state(ctx: AppContext, client: TestClient) -> None:
    job_id = _new_job(ctx, SUM_SQUARES, 6)
    wait_until(lambda: _job(ctx, job_id).state == "succeeded", 30)
    with client.stream("GET", f"/v1/jobs/{job_id}/events", params={"poll_s": 0.05}) as r:
        text = "".join(r.iter_text())
    assert "event: progress" in text and "event: state" in text
    assert text.rstrip().endswith("}") and '"state": "succeeded"' in text


def test_a_cancel_requested_while_a_job_runs_wins_over_its_success(ctx: AppContext) -> None:
    def cancel_then_finish(jctx: JobContext, p: Numbers) -> dict[str, Any]:
        # The cancellation arrives after the handler's last check, while it publishes its result.
        with unit_of_work(jctx.sessions) as uow:
            request_cancel(uow, ctx, jctx.job_id)
        return {"value": "too late"}

    kind = JobKind(name="cancel-then-finish", payload=Numbers, run=cancel_then_finish, queue=lambda _: "cpu",
                   on_finished=_record_ending)
    ctx.kinds[kind.name] = kind
    ctx.dispatcher = _Recorder([])
    job_id = _new_job(ctx, kind)
    assert run_job(ctx, job_id) == "cancelled"
    job = _job(ctx, job_id)
    assert job.state == "cancelled" and job.result is None and endings == [(job_id, "cancelled")]


def _orphan(ctx: AppContext, job_id: str) -> None:
    """A worker claims the job and dies at once: its heartbeat is already stale."""
    with ctx.sessions.begin() as s:
        assert repository.claim(s, job_id, "dead-worker", utcnow())
        s.get(Job, job_id).heartbeat_at = utcnow() - dt.timedelta(seconds=ctx.settings.stale_after_s + 1)  # type: ignore[union-attr]


def test_a_job_whose_workers_keep_dying_gives_up_and_tells_its_domain(ctx: AppContext) -> None:
    published: list[str] = []
    ctx.dispatcher = _Recorder(published)
    job_id = _new_job(ctx, SUM_SQUARES, 2)
    for _ in range(ctx.settings.max_attempts - 1):
        _orphan(ctx, job_id)
        assert requeue_stale(ctx) == [job_id]
    _orphan(ctx, job_id)
    assert requeue_stale(ctx) == []  # the last attempt's worker died too: no more tries
    job = _job(ctx, job_id)
    assert job.state == "failed" and job.error_code == "worker_lost"
    assert job.error == f"gave up after {ctx.settings.max_attempts} attempts: the worker running it was lost each time"
    assert endings == [(job_id, "failed")]


def test_a_running_job_cancelled_while_its_worker_is_dead_ends_cancelled(ctx: AppContext) -> None:
    ctx.dispatcher = _Recorder([])
    job_id = _new_job(ctx, SUM_SQUARES, 2)
    _orphan(ctx, job_id)
    with unit_of_work(ctx.sessions) as uow:
        request_cancel(uow, ctx, job_id)
    assert requeue_stale(ctx) == []
    assert _job(ctx, job_id).state == "cancelled" and endings == [(job_id, "cancelled")]


def test_the_sweeper_publishes_again_a_queued_job_whose_message_was_lost(ctx: AppContext) -> None:
    from service.jobs.runner import republish_lost

    published: list[str] = []
    ctx.dispatcher = _Recorder(published)
    job_id = _new_job(ctx, SUM_SQUARES, 2)
    assert published == [job_id] and republish_lost(ctx) == []  # just published: its message is in flight
    waited = dt.timedelta(seconds=ctx.settings.republish_after_s + 1)
    with ctx.sessions.begin() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.created_at = job.published_at = utcnow() - waited
    assert republish_lost(ctx) == [job_id] and published == [job_id, job_id]
    # Published again just now: the next publication waits at least as long as the job had waited.
    assert republish_lost(ctx) == []
    assert run_job(ctx, job_id) == "succeeded"
    assert run_job(ctx, job_id) == "skipped"  # the duplicate message does nothing
