"""Handing job ids to whatever runs them: Celery workers over a broker, or threads in this process.

Task and queue names are stable constants, not module paths, so API and workers of different versions agree.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

log = logging.getLogger(__name__)

TASK_RUN_JOB = "learngene.run_job"
QUEUE_CPU = "cpu"
QUEUE_GPU = "gpu"
QUEUES = (QUEUE_CPU, QUEUE_GPU)


class Dispatcher(Protocol):
    def publish(self, job_id: str, queue: str) -> None: ...
    def ping(self) -> None: ...
    def close(self) -> None: ...


class CeleryDispatcher:
    def __init__(self, broker_url: str, make_app: Callable[[str], object]) -> None:
        self.app = make_app(broker_url)

    def publish(self, job_id: str, queue: str) -> None:
        self.app.send_task(TASK_RUN_JOB, args=[job_id], queue=queue)  # type: ignore[attr-defined]

    def ping(self) -> None:
        with self.app.connection_for_write() as conn:  # type: ignore[attr-defined]
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
        self._futures: dict[str, Future[object]] = {}
        self._lock = threading.Lock()

    def publish(self, job_id: str, queue: str) -> None:
        future = self._pools[queue].submit(self._run_logged, job_id)
        with self._lock:
            self._futures[job_id] = future
        future.add_done_callback(lambda _f: self._forget(job_id, _f))

    def _run_logged(self, job_id: str) -> object:
        try:
            return self._run(job_id)
        except Exception:  # the runner records failures on the job row; this only keeps the pool alive
            log.exception("in-process job %s crashed", job_id)
            return None

    def _forget(self, job_id: str, future: Future[object]) -> None:
        with self._lock:
            if self._futures.get(job_id) is future:
                del self._futures[job_id]

    def wait(self, job_id: str, timeout: float) -> bool:
        """Block until the job's run returns or ``timeout`` passes; False when it was not running here."""
        with self._lock:
            future = self._futures.get(job_id)
        if future is None:
            return False
        try:
            future.result(timeout=timeout)
        except TimeoutError:
            pass
        return True

    def ping(self) -> None:
        pass

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
