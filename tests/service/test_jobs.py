"""The job lifecycle on both databases: claim once, publish after commit, cancel, reap orphans."""
from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.context import AppContext
from service.db import unit_of_work
from service.jobs import repository
from service.jobs.dispatch import InProcessDispatcher
from service.jobs.service import create_job, request_cancel
from service.models import Job, utcnow
from tests.support import wait_until
from worker import handlers
from worker.runner import JobContext, requeue_stale, run_job


def _sum_squares(jctx: JobContext) -> dict[str, Any]:
    n = int(jctx.payload["n"])
    jctx.progress({"step": n, "total_steps": n})
    return {"value": sum(i * i for i in range(n))}


def _wait_for_cancel(jctx: JobContext) -> dict[str, Any]:
    started.set()
    for _ in range(400):
        jctx.check_cancelled()
        threading.Event().wait(0.05)
    return {"value": "not cancelled"}


started = threading.Event()


@pytest.fixture(autouse=True)
def test_handlers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(handlers.HANDLERS, "sum-squares", _sum_squares)
    monkeypatch.setitem(handlers.HANDLERS, "wait-for-cancel", _wait_for_cancel)
    yield


def _new_job(ctx: AppContext, kind: str, payload: dict[str, Any]) -> str:
    with unit_of_work(ctx.sessions) as uow:
        return create_job(uow, ctx, kind, "cpu", payload).id


def _job(ctx: AppContext, job_id: str) -> Job:
    with ctx.sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def test_a_job_runs_once_and_its_result_is_visible_over_http(ctx: AppContext, client: TestClient) -> None:
    job_id = _new_job(ctx, "sum-squares", {"n": 10})
    wait_until(lambda: _job(ctx, job_id).state == "succeeded", 30, what="the in-process worker")
    body = client.get(f"/v1/jobs/{job_id}").json()
    assert body["result"] == {"value": 285}
    assert body["attempts"] == 1 and body["progress"] == {"step": 10, "total_steps": 10}
    # A redelivered message for a finished job does nothing.
    assert run_job(ctx, job_id) == "skipped"
    assert _job(ctx, job_id).attempts == 1


def test_jobs_are_published_only_after_commit(ctx: AppContext) -> None:
    published: list[str] = []
    ctx.dispatcher = _Recorder(published)
    with pytest.raises(RuntimeError):
        with unit_of_work(ctx.sessions) as uow:
            create_job(uow, ctx, "sum-squares", "cpu", {"n": 1})
            assert published == []
            raise RuntimeError("rolled back")
    assert published == []
    with unit_of_work(ctx.sessions) as uow:
        job = create_job(uow, ctx, "sum-squares", "cpu", {"n": 1})
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
    job_id = _new_job(ctx, "sum-squares", {"n": 3})
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
    job_id = _new_job(ctx, "sum-squares", {"n": 3})
    r = client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert run_job(ctx, job_id) == "skipped"
    assert _job(ctx, job_id).result is None
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409


def test_cancelling_a_running_job_stops_it_at_the_next_step(ctx: AppContext) -> None:
    started.clear()
    ctx.dispatcher = _Recorder([])
    job_id = _new_job(ctx, "wait-for-cancel", {})
    outcome: list[str] = []
    t = threading.Thread(target=lambda: outcome.append(run_job(ctx, job_id)))
    t.start()
    assert started.wait(10)
    with unit_of_work(ctx.sessions) as uow:
        request_cancel(uow.session, job_id)
    t.join(30)
    assert outcome == ["cancelled"]
    assert _job(ctx, job_id).state == "cancelled"


def test_orphaned_running_job_is_requeued_and_finishes_once(ctx: AppContext) -> None:
    published: list[str] = []
    ctx.dispatcher = _Recorder(published)
    job_id = _new_job(ctx, "sum-squares", {"n": 4})
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
        assert not repository.finish(s, job_id, "dead-worker", "failed", error="late")
    assert _job(ctx, job_id).state == "succeeded"


def test_a_handler_error_fails_the_job_with_the_message(ctx: AppContext, client: TestClient) -> None:
    job_id = _new_job(ctx, "sum-squares", {"n": "not a number"})
    wait_until(lambda: _job(ctx, job_id).state == "failed", 30, what="the job to fail")
    assert "ValueError" in client.get(f"/v1/jobs/{job_id}").json()["error"]


def test_in_process_dispatcher_wait_returns_when_done(ctx: AppContext) -> None:
    assert isinstance(ctx.dispatcher, InProcessDispatcher)
    job_id = _new_job(ctx, "sum-squares", {"n": 5})
    ctx.dispatcher.wait(job_id, 30)
    assert _job(ctx, job_id).state == "succeeded"


def test_job_events_stream_ends_with_final_state(ctx: AppContext, client: TestClient) -> None:
    job_id = _new_job(ctx, "sum-squares", {"n": 6})
    wait_until(lambda: _job(ctx, job_id).state == "succeeded", 30)
    with client.stream("GET", f"/v1/jobs/{job_id}/events", params={"poll_s": 0.05}) as r:
        text = "".join(r.iter_text())
    assert "event: progress" in text and "event: state" in text
    assert text.rstrip().endswith("}") and '"state": "succeeded"' in text
