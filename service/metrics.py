"""Prometheus metrics, scraped at ``GET /metrics``.

Two sources. What one process sees (requests, latencies, bytes served, cache hits) is counted where it happens
with prometheus_client; with ``PROMETHEUS_MULTIPROC_DIR`` set (before the processes start, to an empty folder
every process on the machine shares), every API and Celery worker process writes its counts there and a scrape
of any API process adds them up. What the whole deployment agrees on (jobs by kind and state, job durations,
queue depth, descendants produced, condensing throughput) is read from the database at scrape time: the
database is the truth about jobs, whichever machine ran them, and a worker that died mid-job cannot skew it.
"""
from __future__ import annotations

import functools
import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from service.jobs.dispatch import QUEUE_CPU, QUEUE_GPU
from service.jobs.states import FINISHED
from service.models import DescendantRow, Job

#: Seconds; requests range from sub-millisecond reads to a descendant produced while the client waits.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Seconds; jobs range from a 10 ms expansion to hours of condensing.
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 12 * 3600)

HTTP_REQUESTS = Counter("learngene_http_requests", "HTTP requests by route template and status",
                        ["method", "route", "status"])
HTTP_LATENCY = Histogram("learngene_http_request_duration_seconds", "Time to the last byte of the response",
                         ["method", "route", "status"], buckets=LATENCY_BUCKETS)
HTTP_BYTES = Counter("learngene_http_response_bytes", "Response body bytes sent, by route template",
                     ["method", "route"])
CACHE = Counter("learngene_cache_requests", "Lookups in a cache: descendants (an identical request already "
                "answered) and artifacts (a blob already in this machine's cache of the S3 bucket)",
                ["cache", "result"])

F = TypeVar("F", bound=Callable[..., tuple[Any, bool]])


def counts_cache_lookups(cache: str) -> Callable[[F], F]:
    """For a find-or-create function returning ``(row, created)``: a row found is a hit, one created a miss."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def counted(*args: Any, **kwargs: Any) -> tuple[Any, bool]:
            row, created = fn(*args, **kwargs)
            CACHE.labels(cache, "miss" if created else "hit").inc()
            return row, created

        return counted  # type: ignore[return-value]

    return wrap


class RegistryCollector:
    """Reads the job and descendant tables at each scrape (four grouped queries)."""

    def __init__(self, sessions: Any) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        finished = CounterMetricFamily("learngene_jobs_finished", "Jobs that ended, by kind and final state",
                                       labels=["kind", "state"])
        active = GaugeMetricFamily("learngene_jobs_active", "Jobs queued or running, by kind", labels=["kind", "state"])
        depth = GaugeMetricFamily("learngene_queue_depth", "Jobs waiting for a worker, by queue", labels=["queue"])
        queued: dict[str, int] = defaultdict(int)
        throughput: dict[str, float] = defaultdict(float)
        with self.sessions() as session:
            for kind, state, queue, n in session.execute(
                select(Job.kind, Job.state, Job.queue, func.count()).group_by(Job.kind, Job.state, Job.queue)
            ):
                if state in FINISHED:
                    finished.add_metric([kind, state], n)
                else:
                    active.add_metric([kind, state], n)
                if state == "queued":
                    queued[queue] += n
            durations = _job_durations(session)
            for (progress,) in session.execute(
                select(Job.progress).where(Job.kind == "condense", Job.state == "running")
            ):
                # The evaluation card's fine-tuning reports with a "phase"; only condensing itself counts.
                if isinstance(progress, dict) and "phase" not in progress:
                    rate = progress.get("images_per_s")
                    if isinstance(rate, (int, float)):
                        throughput["images"] += rate
            descendants = session.execute(
                select(DescendantRow.method, DescendantRow.status, func.count())
                .where(DescendantRow.deleted_at.is_(None))
                .group_by(DescendantRow.method, DescendantRow.status)
            ).all()
        for queue in sorted(set(queued) | {QUEUE_CPU, QUEUE_GPU}):
            depth.add_metric([queue], queued.get(queue, 0))
        yield from (finished, active, depth)
        yield _histogram("learngene_job_duration_seconds", "From a job's (last) start to its end, by kind and final "
                         "state", durations)
        yield GaugeMetricFamily("learngene_condense_images_per_second",
                                "Training images per second over all running condensing jobs",
                                value=throughput["images"])
        produced = CounterMetricFamily("learngene_descendants_produced", "Descendants in the registry, by method "
                                       "and status (ready: produced; evicted: its weights left the descendant "
                                       "cache); deleted ones are not counted", labels=["method", "status"])
        for method, status, n in descendants:
            produced.add_metric([method, status], n)
        yield produced


#: A histogram's rows by labels: the cumulative count at each of JOB_BUCKETS, the count, the sum of seconds.
Buckets = dict[tuple[str, str], tuple[list[int], int, float]]


def _job_seconds(dialect: str) -> ColumnElement[float]:
    """A finished job's seconds from its (last) start to its end, as SQL; a clock step backwards counts 0."""
    if dialect == "postgresql":
        seconds: ColumnElement[float] = func.extract("epoch", Job.finished_at - Job.started_at)
    else:  # SQLite keeps naive UTC text; julianday's double resolves about 10 microseconds today
        seconds = (func.julianday(Job.finished_at) - func.julianday(Job.started_at)) * 86400.0
    return case((seconds < 0, 0.0), else_=seconds)


def _job_durations(session: Session) -> Buckets:
    """The job-duration histogram counted by the database: one row per (kind, state), whatever the number of
    finished jobs (it used to fetch every finished job's two timestamps at each scrape)."""
    seconds = _job_seconds(session.get_bind().dialect.name)
    rows = session.execute(
        select(Job.kind, Job.state, func.count(), func.coalesce(func.sum(seconds), 0.0),
               *(func.sum(case((seconds <= bound, 1), else_=0)) for bound in JOB_BUCKETS))
        .where(Job.finished_at.is_not(None), Job.started_at.is_not(None))
        .group_by(Job.kind, Job.state)
    )
    return {(kind, state): ([int(c) for c in cumulative], int(n), float(total))
            for kind, state, n, total, *cumulative in rows}


def _histogram(name: str, doc: str, samples: Buckets) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["kind", "state"])
    for labels, (cumulative, count, total) in sorted(samples.items()):
        buckets = [(_le(b), c) for b, c in zip(JOB_BUCKETS, cumulative)] + [("+Inf", count)]
        family.add_metric(list(labels), buckets, total)
    return family


def _le(bound: float) -> str:
    return str(float(bound))


def process_registry() -> CollectorRegistry:
    """This process's own metrics, or with PROMETHEUS_MULTIPROC_DIR every process's on this machine."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return REGISTRY


def exposition(sessions: Any) -> bytes:
    """The Prometheus text format: this process's (or this machine's) counts, then the registry's."""
    registry = CollectorRegistry()
    registry.register(RegistryCollector(sessions))
    return generate_latest(process_registry()) + generate_latest(registry)
