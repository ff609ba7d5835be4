"""``python -m worker <celery worker options>``: what ``learngene worker`` runs once the database is migrated."""
from __future__ import annotations

import sys

from worker.tasks import app

if __name__ == "__main__":
    app.worker_main(["worker", *sys.argv[1:]])
