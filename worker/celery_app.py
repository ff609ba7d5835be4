"""The Celery application: configuration fit for long GPU work. Imports no torch."""
from __future__ import annotations

from celery import Celery
from kombu import Queue

from service.jobs.dispatch import QUEUE_CPU, QUEUE_GPU, TASK_RUN_JOB
from service.settings import Settings


def make_celery(broker_url: str, settings: Settings) -> Celery:
    app = Celery("learngene", broker=broker_url)
    app.conf.update(
        # A message is acknowledged only when its job finished, so a worker that dies mid-job leaves it
        # to be redelivered; the database claim makes sure it still runs to completion only once.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Longer than the longest job: Redis must not hand a running job to a second worker.
        broker_transport_options={"visibility_timeout": settings.max_job_seconds + 3600},
        task_queues=(Queue(QUEUE_CPU), Queue(QUEUE_GPU)),
        task_default_queue=QUEUE_CPU,
        task_routes={TASK_RUN_JOB: {"queue": QUEUE_CPU}},
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
    )
    return app
