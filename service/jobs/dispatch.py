"""Handing job ids to whatever runs them: Celery workers over a broker, or threads in this process.

Task and queue names are stable constants, not module paths, so API and workers of different versions agree.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

log = logging.getLogger(__name__)

TASK_RUN_JOB = "learngene.run_job"
QUEUE_CPU = "cpu"
QUEUE_GPU = "gpu"


class Dispatcher(Protocol):
    def publish(self, job_id: str, queue: str) -> None: ...
    def ping(self) -> None: ...
    def close(self) -> None: ...


class CeleryDispatcher:
    """Publishes to Celery workers. Only a publisher: the app that consumes is ``worker/``'s."""

    def __init__(self, broker_url: str) -> None:
        from celery import Celery

        self.app = Celery("learngene-publisher", broker=broker_url)
        # A broker that is down must not hold the request that publishes: the job is committed already, and
        # the sweeper publishes it again later.
        self.app.conf.update(broker_connection_timeout=2, task_serializer="json")

    def publish(self, job_id: str, queue: str) -> None:
        self.app.send_task(TASK_RUN_JOB, args=[job_id], queue=queue, retry=True,
                           retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2})

    def ping(self) -> None:
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)

    def close(self) -> None:
        pass


class InProcessDispatcher:
    """The embedded default: the same job code Celery would run, on a small thread pool.

    One pool per queue so that a long condensing job never holds up descendant expansions.
    """

    def __init__(self, run: Callable[[str], object], workers: int) -> None:
        self._run = run
        self._pools = {
            QUEUE_CPU: ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lg-cpu"),
            QUEUE_GPU: ThreadPoolExecutor(max_workers=1, thread_name_prefix="lg-gpu"),
        }

    def publish(self, job_id: str, queue: str) -> None:
        self._pools[queue].submit(self._run_logged, job_id)

    def _run_logged(self, job_id: str) -> object:
        try:
            return self._run(job_id)
        except Exception:  # the runner records failures on the job row; this only keeps the pool alive
            log.exception("in-process job %s crashed", job_id)
            return None

    def ping(self) -> None:
        pass

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
