"""Distributed mode: PostgreSQL registry, Redis broker, a real Celery worker process started by the test."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.db import make_engine
from service.migrate import upgrade
from service.settings import Settings
from tests.conftest import _reset_pg
from tests.service.conftest import TINY_ARGS
from tests.support import UNTHROTTLED, Proc, make_settings, start_server, start_worker, wait_until


@pytest.fixture
def distributed(pg_database: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[Settings, str, Path]]:
    _reset_pg(pg_database)
    # Enough attempts for a job whose worker is killed three times.
    settings = make_settings(tmp_path, database_url=pg_database, broker_url=redis_url, max_attempts=5,
                             **UNTHROTTLED)
    engine = make_engine(pg_database)
    upgrade(engine)
    engine.dispose()
    server, url = start_server(settings, tmp_path)
    try:
        yield settings, url, tmp_path
    finally:
        server.stop()


def _wait_job(url: str, job_id: str, timeout: float = 120) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = httpx.get(f"{url}/v1/jobs/{job_id}").json()
        return body if body["state"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(done, timeout, 0.2, f"job {job_id}")


def _upload(url: str, path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        r = httpx.post(f"{url}/v1/ancestries", files={"file": (path.name, f)},
                       data={"architecture": "vit_base_patch16_224", "model_args": json.dumps(TINY_ARGS)},
                       timeout=120)
    assert r.status_code == 201, r.text
    return r.json()


def test_a_celery_worker_takes_jobs_from_redis_and_completes_them(
    distributed: tuple[Settings, str, Path], tiny_ancestry_file: Path
) -> None:
    settings, url, tmp = distributed
    assert httpx.get(f"{url}/readyz").json()["checks"]["broker"] == "ok"
    ancestry = _upload(url, tiny_ancestry_file)
    r = httpx.post(f"{url}/v1/condense-jobs", json={"ancestry": ancestry["id"], "method": "tleg",
                                                    "learngene": "redis-tleg", "mode": "fit", "evaluate": False})
    assert r.status_code == 202
    job_id = r.json()["id"]
    # No worker yet: the job waits in Redis, queued.
    assert httpx.get(f"{url}/v1/jobs/{job_id}").json()["state"] == "queued"
    worker: Proc = start_worker(settings, tmp, "w1")
    try:
        job = _wait_job(url, job_id)
        assert job["state"] == "succeeded", (job["error"], worker.log())
        assert job["worker"] and job["worker"].split(":")[1] == str(worker.popen.pid)
        version = httpx.get(f"{url}/v1/learngenes/redis-tleg/versions/latest").json()
        assert version["lineage"]["job_id"] == job_id and version["sha256"]

        desc = httpx.post(f"{url}/v1/descendants", params={"wait": 60},
                          json={"learngene": "redis-tleg", "spec": {"depth": 3}}, timeout=90)
        assert desc.status_code == 201, desc.text
        weights = httpx.get(f"{url}{desc.json()['weights_url']}")
        assert weights.status_code == 200 and len(weights.content) == desc.json()["size_bytes"]
        expand_job = httpx.get(f"{url}/v1/jobs/{desc.json()['job_id']}").json()
        assert expand_job["worker"].split(":")[1] == str(worker.popen.pid)
    finally:
        worker.stop()


def test_a_job_whose_worker_is_killed_three_times_resumes_from_its_checkpoint_and_finishes_once(
    distributed: tuple[Settings, str, Path], tiny_ancestry_file: Path
) -> None:
    import os
    import signal

    from service.jobs.service import checkpoint_name
    from service.storage import make_store

    settings, url, tmp = distributed
    store = make_store(settings)
    ancestry = _upload(url, tiny_ancestry_file)
    params = {"steps": 120, "batch_size": 8, "warmup_steps": 5, "aux_depth": 4, "checkpoint_every_s": 0.1}
    r = httpx.post(f"{url}/v1/condense-jobs", json={"ancestry": ancestry["id"], "method": "tleg",
                                                    "learngene": "survivor", "dataset": "builtin:digits",
                                                    "params": params, "evaluate": False})
    job_id = r.json()["id"]
    killed_at: list[int] = []
    for past in (20, 50, 80):
        doomed = start_worker(settings, tmp, f"doomed-{past}")
        try:
            def progressed() -> int:
                step = httpx.get(f"{url}/v1/jobs/{job_id}").json()["progress"].get("step", 0)
                return step if step >= past else 0

            killed_at.append(wait_until(progressed, 300, 0.05, f"training past step {past}"))
            os.killpg(doomed.popen.pid, signal.SIGKILL)  # no warm shutdown: the worker just vanishes
            doomed.popen.wait()
        finally:
            doomed.stop()
        assert httpx.get(f"{url}/v1/jobs/{job_id}").json()["state"] == "running"  # orphaned, heartbeat stopping
        assert store.get_named(checkpoint_name(job_id)) is not None

    rescuer = start_worker(settings, tmp, "rescuer")
    try:
        job = _wait_job(url, job_id, timeout=400)
        assert job["state"] == "succeeded", (job["error"], rescuer.log())
        assert job["attempts"] == 4
        assert job["worker"].split(":")[1] == str(rescuer.popen.pid)
    finally:
        rescuer.stop()
    text = httpx.get(f"{url}/v1/jobs/{job_id}/events", params={"poll_s": 0.05}, timeout=30).text
    events = [(kind.removeprefix("event: "), json.loads(data.removeprefix("data: ")))
              for kind, data in zip(text.splitlines(), text.splitlines()[1:])
              if kind.startswith("event: ") and data.startswith("data: ")]
    starts = [i for i, (kind, _) in enumerate(events) if kind == "started"] + [len(events)]
    assert [events[i][1]["attempt"] for i in starts[:-1]] == [1, 2, 3, 4]
    steps = [[data["step"] for kind, data in events[a:b] if kind == "progress"] for a, b in zip(starts, starts[1:])]
    for attempt, killed in enumerate(killed_at):
        # Each attempt picked up from a checkpoint near where the previous one died, not from step 0.
        assert max(steps[attempt]) >= killed
        assert killed // 2 <= steps[attempt + 1][0] <= max(steps[attempt]) + 10, (killed, steps[attempt + 1][:3])
    assert steps[-1][-1] == params["steps"]
    versions = httpx.get(f"{url}/v1/learngenes/survivor/versions").json()["items"]
    assert [v["version"] for v in versions] == [1] and versions[0]["lineage"]["job_id"] == job_id
    assert store.get_named(checkpoint_name(job_id)) is None  # the job ended: nothing can resume from it
