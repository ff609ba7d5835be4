"""Database engine, sessions and the request's unit of work.

Services never commit. The request's unit of work commits once, and only after that commit does it run the
callbacks registered with :meth:`UnitOfWork.after_commit` (publishing jobs), so a worker can never be handed a
row that was rolled back.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # A SQLite connection is a file handle: keep enough of them for every request thread (anyio's pool has 40)
        # and the in-process job threads. With SQLAlchemy's default (5 + 10 overflow) a loaded API opened and
        # closed an overflow connection, pragmas included, on most requests.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=48, max_overflow=16)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets readers run beside the one writer; the busy timeout makes concurrent writers wait
            # instead of failing; SQLite leaves foreign keys off unless asked.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


class UnitOfWork:
    """A session plus the work to do once its transaction is durable."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._after_commit: list[Callable[[], None]] = []

    def after_commit(self, callback: Callable[[], None]) -> None:
        self._after_commit.append(callback)

    def commit(self) -> None:
        self.session.commit()
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()

    def rollback(self) -> None:
        self.session.rollback()
        self._after_commit.clear()


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[UnitOfWork]:
    """Commit on success, roll back on error, always close."""
    session = factory()
    uow = UnitOfWork(session)
    try:
        yield uow
        uow.commit()
    except BaseException:
        uow.rollback()
        raise
    finally:
        session.close()
