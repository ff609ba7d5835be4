"""``python -m worker <celery worker options>``: what ``learngene worker`` runs once the database is migrated."""
from __future__ import annotations

import sys

from celery.signals import setup_logging

from service import logs
from service.settings import get_settings
from worker.tasks import app


@setup_logging.connect
def _our_logging(**_: object) -> None:
    """Celery installs its own handlers unless this signal has a receiver: ours logs in LEARNGENE_LOG_FORMAT,
    with the job id, kind and attempt of whatever runs."""
    logs.configure(get_settings().resolved_log_format)


if __name__ == "__main__":
    app.worker_main(["worker", *sys.argv[1:]])
