"""What operators see: /metrics (parsed with prometheus_client's own parser) counts requests, bytes, jobs and
descendants by the right amounts across two API processes and a Celery worker sharing PROMETHEUS_MULTIPROC_DIR;
logs are JSON lines carrying the request id."""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.db import make_engine
from service.migrate import upgrade
from tests.conftest import _reset_pg
from tests.service.conftest import ARCH, TINY_ARGS
from tests.support import Proc, make_settings, start_server, start_worker, wait_until


@dataclass
class Deployment:
    urls: list[str]
    servers: list[Proc]
    worker: Proc
    ancestry_id: int


@pytest.fixture(scope="module")
def deployment(pg_database: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory,
               tiny_ancestry_file: Path) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("observed")
    _reset_pg(pg_database)
    engine = make_engine(pg_database)
    upgrade(engine)
    engine.dispose()
    settings = make_settings(tmp, database_url=pg_database, broker_url=redis_url)
    (tmp / "prometheus").mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp / "prometheus"), "LEARNGENE_LOG_FORMAT": "json"}
    procs: list[Proc] = []
    urls: list[str] = []
    try:
        for _ in range(2):
            server, url = start_server(settings, tmp, env=env)
            procs.append(server)
            urls.append(url)
        worker = start_worker(settings, tmp, "observed", env=env)
        procs.append(worker)
        with open(tiny_ancestry_file, "rb") as f:
            r = httpx.post(f"{urls[0]}/v1/ancestries", files={"file": ("tiny.safetensors", f)},
                           data={"architecture": ARCH, "model_args": json.dumps(TINY_ARGS)}, timeout=120)
        assert r.status_code == 201, r.text
        yield Deployment(urls=urls, servers=procs[:2], worker=worker, ancestry_id=r.json()["id"])
    finally:
        for proc in procs:
            proc.stop()


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics by (name, labels)."""
    r = httpx.get(f"{url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_job(url: str, job_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        job = httpx.get(f"{url}/v1/jobs/{job_id}").json()
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(ended, 120, 0.1, f"job {job_id}")


def test_counters_move_by_what_happened_across_processes(deployment: Deployment) -> None:
    a, b = deployment.urls
    before = scrape(a)

    job = httpx.post(f"{a}/v1/condense-jobs", json={"ancestry": deployment.ancestry_id, "method": "tleg",
                                                    "learngene": "m-tleg", "mode": "fit", "evaluate": False}).json()
    assert wait_job(a, job["id"])["state"] == "succeeded"
    for url in (a, b, b):  # the two API processes count into the same folder
        assert httpx.get(f"{url}/v1/learngenes/m-tleg").status_code == 200
    for _ in range(2):
        assert httpx.get(f"{b}/v1/learngenes/absent").status_code == 404
    made = httpx.post(f"{a}/v1/descendants", params={"wait": 30}, json={"learngene": "m-tleg", "spec": {"depth": 3}})
    assert made.status_code == 201, made.text
    again = httpx.post(f"{b}/v1/descendants", json={"learngene": "m-tleg", "spec": {"depth": 3}})
    assert again.status_code == 200
    weights_url = made.json()["weights_url"]
    size = len(httpx.get(f"{a}{weights_url}").content)
    assert size == made.json()["size_bytes"]
    assert len(httpx.get(f"{b}{weights_url}", headers={"range": "bytes=0-99"}).content) == 100

    after = scrape(b)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    lg = {"method": "GET", "route": "/v1/learngenes/{name}"}
    assert moved("learngene_http_requests_total", **lg, status="200") == 3
    assert moved("learngene_http_requests_total", **lg, status="404") == 2
    assert moved("learngene_http_request_duration_seconds_count", **lg, status="200") == 3
    assert moved("learngene_http_request_duration_seconds_bucket", **lg, status="200", le="+Inf") == 3
    assert moved("learngene_http_requests_total", method="POST", route="/v1/descendants", status="201") == 1
    weights = {"method": "GET", "route": "/v1/descendants/{descendant_id}/weights"}
    assert moved("learngene_http_response_bytes_total", **weights) == size + 100
    assert moved("learngene_cache_requests_total", cache="descendants", result="hit") == 1
    assert moved("learngene_cache_requests_total", cache="descendants", result="miss") == 1

    assert moved("learngene_jobs_finished_total", kind="condense", state="succeeded") == 1
    assert moved("learngene_jobs_finished_total", kind="expand", state="succeeded") == 1
    assert moved("learngene_job_duration_seconds_count", kind="expand", state="succeeded") == 1
    assert value(after, "learngene_descendants_produced_total", method="tleg", status="ready") == 1
    assert value(after, "learngene_queue_depth", queue="cpu") == 0


def test_condensing_throughput_and_queue_depth_while_jobs_run(deployment: Deployment) -> None:
    url = deployment.urls[0]
    long = httpx.post(f"{url}/v1/condense-jobs", json={
        "ancestry": deployment.ancestry_id, "method": "tleg", "learngene": "m-long", "dataset": "builtin:digits",
        "evaluate": False, "params": {"steps": 3000, "batch_size": 16, "aux_depth": 4}}).json()  # reports every 30 steps
    # The solo worker is busy training: a second job waits in the queue.
    waiting = httpx.post(f"{url}/v1/condense-jobs", json={
        "ancestry": deployment.ancestry_id, "method": "tleg", "learngene": "m-waiting", "mode": "fit",
        "evaluate": False}).json()
    try:
        wait_until(lambda: httpx.get(f"{url}/v1/jobs/{long['id']}").json()["progress"].get("images_per_s"), 120,
                   0.2, "training to report its speed")
        now = scrape(url)
        assert value(now, "learngene_condense_images_per_second") > 0
        assert value(now, "learngene_queue_depth", queue=waiting["queue"]) == 1
        assert value(now, "learngene_jobs_active",
                     kind="condense", state="running") == 1
    finally:
        httpx.post(f"{url}/v1/jobs/{long['id']}/cancel")
        wait_job(url, long["id"])
        wait_job(url, waiting["id"])
    ended = scrape(url)
    assert value(ended, "learngene_jobs_finished_total", kind="condense", state="cancelled") == 1
    assert value(ended, "learngene_condense_images_per_second") == 0


def test_logs_are_json_lines_with_the_request_id(deployment: Deployment) -> None:
    url = deployment.urls[1]
    r = httpx.get(f"{url}/v1/learngenes/absent", headers={"x-request-id": "trace-me-42"})
    assert r.headers["x-request-id"] == "trace-me-42"
    generated = httpx.get(f"{url}/healthz").headers["x-request-id"]
    assert len(generated) == 32

    def line_of(request_id: str) -> dict[str, Any] | None:
        for text in deployment.servers[1].log_path.read_text().splitlines():
            if text.startswith("{") and json.loads(text).get("request_id") == request_id:
                return json.loads(text)
        return None

    line = wait_until(lambda: line_of("trace-me-42"), 10, 0.1, "the access log line")
    assert line["route"] == "/v1/learngenes/{name}" and line["status"] == 404 and line["level"] == "info"
    assert line["duration_ms"] >= 0 and line["timestamp"].endswith("+00:00")
    assert wait_until(lambda: line_of(generated), 10, 0.1, "the generated id's line")["route"] == "/healthz"


def test_worker_lines_name_the_job_kind_and_attempt(deployment: Deployment) -> None:
    url = deployment.urls[0]
    made = httpx.post(f"{url}/v1/descendants", params={"wait": 30}, json={"learngene": "m-tleg", "spec": {"depth": 2}})
    job_id = made.json()["job_id"]
    wait_job(url, job_id)

    def lines() -> list[dict[str, Any]]:
        parsed = [json.loads(t) for t in deployment.worker.log_path.read_text().splitlines() if t.startswith("{")]
        return [p for p in parsed if p.get("job_id") == job_id]

    mine = wait_until(lambda: (found := lines()) and any("succeeded" in p["message"] for p in found) and found,
                      10, 0.1, "the worker's lines about the job")
    assert {(p["job_kind"], p["attempt"]) for p in mine} == {("expand", 1)}
    assert any("started" in p["message"] for p in mine)


def test_the_job_duration_histogram_is_counted_by_the_database(ctx: Any) -> None:
    """Regression: each scrape fetched every finished job's two timestamps and bucketed them in Python, so the
    scrape grew with the registry's whole history. The database now counts one row per (kind, state); the
    buckets, counts and sums are the same on SQLite and PostgreSQL."""
    import datetime as dt

    from sqlalchemy import event

    from service.metrics import JOB_BUCKETS, RegistryCollector
    from service.models import Job

    start = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    seconds = {"expand": [0.01, 0.3, 0.7, 7.0, 100.0, -2.0], "condense": [5000.0, 50_000.0]}
    with ctx.sessions.begin() as session:
        for kind, values in seconds.items():
            for i, s in enumerate(values):
                session.add(Job(id=f"{kind[:1]}{i}".ljust(32, "0"), kind=kind, queue="cpu",
                                state="succeeded" if kind == "expand" else "failed", started_at=start,
                                finished_at=start + dt.timedelta(seconds=s)))
        session.add(Job(id="q" * 32, kind="expand", queue="cpu", started_at=start))  # still queued: not counted
    statements: list[str] = []
    engine = ctx.sessions.kw["bind"]

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        families = {f.name: f for f in RegistryCollector(ctx.sessions).collect()}
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    reads = [s for s in statements if "started_at" in s]
    assert reads and all("GROUP BY" in s.upper() for s in reads), reads
    samples = {(s.name, s.labels["kind"], s.labels["state"], s.labels.get("le")): s.value
               for s in families["learngene_job_duration_seconds"].samples}
    for kind, state in (("expand", "succeeded"), ("condense", "failed")):
        values = [max(0.0, v) for v in seconds[kind]]
        for bound in JOB_BUCKETS:
            got = samples[("learngene_job_duration_seconds_bucket", kind, state, str(float(bound)))]
            assert got == sum(1 for v in values if v <= bound), (kind, bound)
        assert samples[("learngene_job_duration_seconds_bucket", kind, state, "+Inf")] == len(values)
        assert samples[("learngene_job_duration_seconds_count", kind, state, None)] == len(values)
        assert samples[("learngene_job_duration_seconds_sum", kind, state, None)] == pytest.approx(sum(values),
                                                                                                 abs=1e-3)
