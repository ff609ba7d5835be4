"""Shared fixtures: real PostgreSQL and Redis on this machine, real migrations, real servers and workers.

PostgreSQL (127.0.0.1:5432, trust auth) and Redis (127.0.0.1:6379) must be running; `scripts/test.sh`
starts them when they are not. Each test session gets its own PostgreSQL database and Redis db index.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from service.context import AppContext
from service.db import make_engine
from service.migrate import upgrade
from service.settings import Settings
from service.wiring import build_context
from tests.support import RedisDbClaim, make_settings, start_server

PG_ADMIN = os.environ.get("LEARNGENE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("LEARNGENE_TEST_REDIS", "redis://127.0.0.1:6379")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    name = f"lg_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    yield f"{base.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis db index claimed by this test run alone (emptied before and after), so that two runs on one
    machine (a clean-clone CI run beside a developer's) never take each other's Celery messages."""
    claim = RedisDbClaim(REDIS_BASE, os.environ.get("LEARNGENE_TEST_REDIS_DB"))
    try:
        yield claim.url
    finally:
        claim.release()


def _reset_pg(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for an empty, migrated registry on each supported database."""
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_database")
        _reset_pg(url)
        settings = make_settings(tmp_path, database_url=url)
    else:
        settings = make_settings(tmp_path)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    engine.dispose()
    return settings


@pytest.fixture
def ctx(backend_settings: Settings) -> Iterator[AppContext]:
    context = build_context(backend_settings)
    yield context
    context.close()


@pytest.fixture
def client(ctx: AppContext) -> Iterator["TestClient"]:
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(ctx.settings, ctx=ctx)) as c:
        yield c




@pytest.fixture(scope="session")
def seeded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``learngene serve`` on a fresh data dir: the first start seeds the registry before it listens."""
    tmp = tmp_path_factory.mktemp("seeded")
    server, url = start_server(make_settings(tmp, seed_on_start=True), tmp, timeout=900)
    try:
        yield url
    finally:
        server.stop()
