"""The models and the migrations describe the same tables, on SQLite and PostgreSQL; 0008 backfills what it adds,
0009 goes up and down beside rows that name jobs."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData, Table, insert

from service.db import make_engine
from service.migrate import upgrade
from service.models import Base
from tests.conftest import _reset_pg


def _url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "postgresql":
        url: str = request.getfixturevalue("pg_database")
        _reset_pg(url)
        return url
    return f"sqlite:///{tmp_path / 'registry.db'}"


def _registry_at(revision: str, backend: str, tmp_path: Path,
                 request: pytest.FixtureRequest) -> tuple[str, Engine, dict[str, Table]]:
    """A new registry migrated up to ``revision``: its URL, engine and tables as that revision has them."""
    url = _url(backend, tmp_path, request)
    engine = make_engine(url)
    upgrade(engine, revision)
    tables = MetaData()
    tables.reflect(engine)
    return url, engine, dict(tables.tables)


def _downgraded(url: str, engine: Engine, revision: str) -> MetaData:
    """Migrates the registry down to ``revision``; its tables as they are then."""
    from alembic import command

    from service.migrate import alembic_config

    cfg = alembic_config(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
    tables = MetaData()
    tables.reflect(engine)
    return tables


def _job(job_id: str, owner: str | None, now: dt.datetime) -> dict[str, object]:
    """A finished expansion's row, as any revision since 0003 holds it."""
    return {"id": job_id, "kind": "expand", "queue": "cpu", "state": "succeeded", "payload": {}, "progress": {},
            "attempts": 1, "max_attempts": 3, "cancel_requested": False, "owner": owner, "created_at": now,
            "published_at": now}


def _relevant(diff: object) -> bool:
    # Server defaults and comments are not compared by alembic by default; type differences that only SQLite's
    # reflection makes up (its JSON and DateTime read back generically) are not differences.
    return not (isinstance(diff, list) and diff and diff[0][0] == "modify_type")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_models_match_the_migrations_at_head(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    engine = make_engine(_url(backend, tmp_path, request))
    upgrade(engine)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert [d for d in diffs if _relevant(d)] == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0008_gives_descendants_the_owner_of_their_first_job_and_goes_down_again(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url, engine, t = _registry_at("0007", backend, tmp_path, request)
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(insert(t["jobs"]), [_job(f"{i}" * 32, owner, now) for i, owner in ((1, "alice"), (2, None))])
        conn.execute(insert(t["descendants"]), [
            {"cache_key": f"{i}" * 64, "method": "tleg", "spec": {}, "seed": 0, "status": "ready", "job_id": job,
             "param_count": 1, "gflops": 0.0, "details": {}, "created_at": now}
            for i, job in ((1, "1" * 32), (2, "2" * 32), (3, None))])
    upgrade(engine)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT owner, pinned, last_used_at IS NOT NULL, deleted_at FROM descendants"
                                    " ORDER BY id").all()
    assert [tuple(r) for r in rows] == [("alice", False, True, None), (None, False, True, None),
                                        (None, False, True, None)]
    tables = _downgraded(url, engine, "0007")
    assert "owner" not in tables.tables["descendants"].c and "deleted_at" not in tables.tables["ancestries"].c
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0009_adds_job_charges_beside_jobs_that_are_named_and_goes_down_again(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Regression: in SQLite's batch mode the migration copied the jobs table and dropped the old one, which the
    job events' and descendants' foreign keys refused. A registry with a job, its event and its descendant goes
    up (charges empty: nothing is charged twice) and down again."""
    url, engine, t = _registry_at("0008", backend, tmp_path, request)
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(insert(t["jobs"]), [_job("1" * 32, "alice", now)])
        conn.execute(insert(t["job_events"]), [{"job_id": "1" * 32, "kind": "progress", "data": {},
                                                "created_at": now}])
        conn.execute(insert(t["descendants"]), [
            {"cache_key": "1" * 64, "method": "tleg", "spec": {}, "seed": 0, "status": "ready", "job_id": "1" * 32,
             "param_count": 1, "gflops": 0.0, "details": {}, "created_at": now, "pinned": False}])
    upgrade(engine)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT id, quota_bucket, charged_bytes FROM jobs").all()
        assert [tuple(r) for r in rows] == [("1" * 32, None, None)]
        assert conn.exec_driver_sql("SELECT count(*) FROM job_events").scalar() == 1
    tables = _downgraded(url, engine, "0008")
    assert "charged_bytes" not in tables.tables["jobs"].c and "quota_bucket" not in tables.tables["jobs"].c
    engine.dispose()
