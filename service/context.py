"""What a process of the service holds, as plain data: settings, database, storage, the job kinds it can run and
the job dispatcher. Built once per process by the composition root (``service/wiring.py``); the API and the
workers build the same context, only the dispatcher differs (Celery or in-process threads)."""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.jobs.dispatch import Dispatcher
from service.jobs.kinds import JobKind
from service.limits.counters import Counters
from service.settings import Settings
from service.storage import ArtifactStore


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ArtifactStore
    #: The job kinds this process can run, by name (every domain's ``KINDS``, collected by the wiring).
    kinds: dict[str, JobKind[Any]] = field(default_factory=dict)
    dispatcher: Dispatcher | None = field(default=None)
    #: Rate-limit and quota counters; set by the API (``service.app``), None in workers.
    counters: Counters | None = field(default=None)
    #: Set when the process stops: its running jobs stop at their next check and are handed back to the queue
    #: (checkpoint kept), so a stop never waits for a long job and never loses one.
    stopping: threading.Event = field(default_factory=threading.Event)
    #: The domains' housekeeping (the descendant cache's budget, garbage collection of orphan blobs), run by the
    #: job kernel's maintenance loop beside its reaper and sweeper; set by the composition root.
    housekeeping: tuple[Callable[[AppContext], object], ...] = field(default=())

    def close(self) -> None:
        self.stopping.set()
        if self.dispatcher is not None:
            self.dispatcher.close()
        self.engine.dispose()
