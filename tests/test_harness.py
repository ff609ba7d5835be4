"""The test harness's own guarantees: two test runs on one machine never share a Redis db index.

Regression: every run used db index 11, so a clean-clone CI run beside another run lost a descendant's Celery
message to the other run's worker (``test_a_celery_worker_takes_jobs_from_redis_and_completes_them`` got 202
after waiting 60 s). These tests use a redis-server of their own, never the shared one.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support import RedisDbClaim, RedisServer


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(tmp_path)
    try:
        yield server.url.rsplit("/", 1)[0]
    finally:
        server.stop()


def test_two_test_runs_claim_different_redis_db_indexes_and_a_released_index_is_taken_again(own_redis: str) -> None:
    first, second = RedisDbClaim(own_redis), RedisDbClaim(own_redis)
    assert first.db != second.db and 0 not in (first.db, second.db)
    with pytest.raises(RuntimeError, match="no free Redis db index"):
        RedisDbClaim(own_redis, only=str(first.db))
    first.release()
    third = RedisDbClaim(own_redis, only=str(first.db))
    assert third.db == first.db
    second.release()
    third.release()


def test_a_claimed_index_starts_empty_and_ends_empty(own_redis: str) -> None:
    claim = RedisDbClaim(own_redis)
    client = redis.Redis.from_url(claim.url)
    client.rpush("cpu", b"a message of this run")
    claim.release()
    assert client.dbsize() == 1  # only the marker that says a test run used this index
    client.rpush("cpu", b"left by a crashed run")
    again = RedisDbClaim(own_redis, only=str(claim.db))
    assert client.llen("cpu") == 0  # a crashed test run's leftovers are cleared
    again.release()
    client.close()


def test_an_index_holding_someone_elses_data_is_never_claimed_or_emptied(own_redis: str) -> None:
    client = redis.Redis.from_url(f"{own_redis}/1")
    client.set("an application's key", b"keep me")
    claim = RedisDbClaim(own_redis)
    assert claim.db == 2
    assert client.get("an application's key") == b"keep me" and client.dbsize() == 1
    with pytest.raises(RuntimeError, match="holds data of its own"):
        RedisDbClaim(own_redis, only="1")
    claim.release()
    client.close()
