"""S3-compatible storage: the store against a real S3 HTTP endpoint (moto's S3 server on loopback, spoken to by
boto3 over HTTP), and the service split over machines that share nothing but PostgreSQL, Redis and the bucket."""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from pydantic import ValidationError

from service.db import make_engine
from service.migrate import upgrade
from service.settings import Settings
from service.storage import S3ArtifactStore, content_key, make_store
from tests.conftest import _reset_pg
from tests.service.conftest import TINY_ARGS
from tests.support import make_settings, start_server, start_worker, wait_until

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "learngene-test", "AWS_SECRET_ACCESS_KEY": "learngene-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)  # read by boto3 here and inherited by the servers and workers we start
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"lg-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def _store(endpoint: str, bucket: str, cache: Path, prefix: str = "prod") -> S3ArtifactStore:
    store = make_store(Settings(data_dir=cache, storage_url=f"s3://{bucket}/{prefix}", s3_endpoint_url=endpoint,
                                cache_dir=cache))
    assert isinstance(store, S3ArtifactStore)
    return store


def _keys(endpoint: str, bucket: str) -> list[str]:
    listing = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def test_blobs_written_on_one_machine_are_read_on_another(s3_endpoint: str, bucket: str, tmp_path: Path) -> None:
    writer = _store(s3_endpoint, bucket, tmp_path / "writer-cache")
    reader = _store(s3_endpoint, bucket, tmp_path / "reader-cache")
    data = os.urandom(3 * 1024 * 1024 + 17)
    src = writer.scratch_dir() / "upload.bin"
    src.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()

    stored = writer.put_file(src, move=True)
    assert stored.key == content_key(digest) and stored.size == len(data) and not src.exists()
    assert _keys(s3_endpoint, bucket) == [f"prod/{stored.key}"]
    assert writer.local_path(stored.key).read_bytes() == data  # the writer kept its copy

    assert not (tmp_path / "reader-cache" / stored.key).exists()
    assert reader.exists(stored.key) and reader.size(stored.key) == len(data)
    with reader.open(stored.key) as f:
        assert f.read() == data
    assert (tmp_path / "reader-cache" / stored.key).is_file()  # fetched once, then local
    assert not list(reader.scratch_dir().iterdir())

    again = reader.put_bytes(data)  # the same content is not uploaded twice
    assert again == stored and _keys(s3_endpoint, bucket) == [f"prod/{stored.key}"]

    assert reader.get_named("checkpoints/job-1") is None
    key = writer.put_named("checkpoints/job-1", b"step 1")
    writer.put_named("checkpoints/job-1", b"step 2")
    assert key == "named/checkpoints/job-1" and reader.get_named("checkpoints/job-1") == b"step 2"

    writer.delete(stored.key)
    reader.delete(stored.key)
    assert not reader.exists(stored.key) and _keys(s3_endpoint, bucket) == ["prod/named/checkpoints/job-1"]
    with pytest.raises(FileNotFoundError):
        reader.local_path(stored.key)


def test_a_blob_that_does_not_match_its_sha256_is_refused(s3_endpoint: str, bucket: str, tmp_path: Path) -> None:
    key = content_key(hashlib.sha256(b"what the registry expects").hexdigest())
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=bucket, Key=f"prod/{key}", Body=b"tampered")
    store = _store(s3_endpoint, bucket, tmp_path / "cache")
    with pytest.raises(OSError, match="does not match its sha256"):
        store.local_path(key)
    assert not (tmp_path / "cache" / key).exists() and not list(store.scratch_dir().iterdir())


def test_a_missing_bucket_fails_ping_until_it_is_created(s3_endpoint: str, tmp_path: Path) -> None:
    store = _store(s3_endpoint, f"lg-missing-{uuid.uuid4().hex[:8]}", tmp_path / "cache")
    with pytest.raises(Exception):
        store.ping()
    store.ensure_bucket()
    store.ensure_bucket()  # idempotent
    store.ping()


def test_the_cache_keeps_within_its_bound_least_recently_used_first(s3_endpoint: str, bucket: str,
                                                                     tmp_path: Path) -> None:
    import time

    store = make_store(Settings(data_dir=tmp_path, storage_url=f"s3://{bucket}", s3_endpoint_url=s3_endpoint,
                                cache_max_bytes=2_500_000))
    assert isinstance(store, S3ArtifactStore)
    store.keep_recent_s = 0.0
    blobs = [os.urandom(1_000_000) for _ in range(3)]
    keys = []
    for age, data in zip((300, 200), blobs[:2]):  # two blobs, used 300 s and 200 s ago
        keys.append(store.put_bytes(data).key)
        past = time.time() - age
        os.utime(store.cache.local_path(keys[-1]), (past, past))
    store.local_path(keys[0])  # reading the older one makes it the most recently used
    keys.append(store.put_bytes(blobs[2]).key)  # 3 MB > 2.5 MB: the least recently used (keys[1]) goes

    cached = {k for k in keys if (tmp_path / "cache" / k).is_file()}
    assert cached == {keys[0], keys[2]}
    assert store.open(keys[1]).read() == blobs[1]  # evicted from the cache, not from the bucket
    assert (tmp_path / "cache" / keys[1]).is_file() and not (tmp_path / "cache" / keys[0]).is_file()

    # Blobs used within keep_recent_s are never evicted, even over the bound.
    store.keep_recent_s = 3600.0
    store.put_bytes(os.urandom(1_000_000))
    assert sum(1 for p in (tmp_path / "cache" / "sha256").glob("*/*")) == 3


@pytest.mark.parametrize("url", ["ftp://host/x", "s3://", "s3:///prefix", "/plain/path"])
def test_unknown_storage_urls_are_refused_at_start(url: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="LEARNGENE_STORAGE_URL"):
        Settings(data_dir=tmp_path, storage_url=url)


def test_api_and_worker_on_separate_machines_share_only_the_bucket(
    s3_endpoint: str, bucket: str, pg_database: str, redis_url: str, tmp_path: Path, tiny_ancestry_file: Path
) -> None:
    """API and Celery worker with their own data folders: the ancestry goes API -> S3 -> worker, the learngene and
    the descendant worker -> S3 -> API, and what the API serves is what the worker wrote."""
    _reset_pg(pg_database)
    engine = make_engine(pg_database)
    upgrade(engine)
    engine.dispose()
    common = {"database_url": pg_database, "broker_url": redis_url, "storage_url": f"s3://{bucket}/lg",
              "s3_endpoint_url": s3_endpoint}
    api_settings = make_settings(tmp_path / "api", **common)  # type: ignore[arg-type]
    worker_settings = make_settings(tmp_path / "worker", **common)  # type: ignore[arg-type]
    (tmp_path / "api").mkdir()
    (tmp_path / "worker").mkdir()
    server, url = start_server(api_settings, tmp_path / "api")
    worker = start_worker(worker_settings, tmp_path / "worker", "s3w")
    try:
        assert httpx.get(f"{url}/readyz").json()["checks"]["storage"] == "ok"
        with open(tiny_ancestry_file, "rb") as f:
            ancestry = httpx.post(f"{url}/v1/ancestries", files={"file": (tiny_ancestry_file.name, f)},
                                  data={"architecture": "vit_base_patch16_224",
                                        "model_args": json.dumps(TINY_ARGS)}, timeout=60).json()
        job = httpx.post(f"{url}/v1/condense-jobs", json={"ancestry": ancestry["id"], "method": "tleg",
                                                          "learngene": "s3-tleg", "mode": "fit",
                                                          "evaluate": False}).json()

        def finished() -> dict[str, object] | None:
            body = httpx.get(f"{url}/v1/jobs/{job['id']}").json()
            return body if body["state"] not in ("queued", "running") else None

        done = wait_until(finished, 120, 0.2, "the condensing job")
        assert done["state"] == "succeeded", (done, worker.log())

        r = httpx.post(f"{url}/v1/descendants", params={"wait": 60},
                       json={"learngene": "s3-tleg", "spec": {"depth": 3}}, timeout=90)
        assert r.status_code == 201, r.text
        desc = r.json()
        api_cache = tmp_path / "api" / "cache"
        assert not (api_cache / content_key(desc["sha256"])).exists()  # written by the worker only
        weights = httpx.get(f"{url}{desc['weights_url']}")
        assert weights.status_code == 200 and hashlib.sha256(weights.content).hexdigest() == desc["sha256"]
        part = httpx.get(f"{url}{desc['weights_url']}", headers={"Range": "bytes=8-15"})
        assert part.status_code == 206 and part.content == weights.content[8:16]

        keys = _keys(s3_endpoint, bucket)
        lg = httpx.get(f"{url}/v1/learngenes/s3-tleg/versions/latest").json()
        for digest in (ancestry["sha256"], lg["sha256"], desc["sha256"]):
            assert f"lg/{content_key(digest)}" in keys
        assert (tmp_path / "worker" / "cache" / content_key(ancestry["sha256"])).is_file()  # fetched by the worker
    finally:
        worker.stop()
        server.stop()
