"""The service under attack: every defect found by hand and by the fuzzer (issue "Abuse-proof API") is a test here.

Each test also checks what was stored (goal: nothing) where a refused request could have left something.
"""
from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.context import AppContext
from service.models import Ancestry, ApiKey, DatasetRow, DescendantRow, Job, LearngeneRow
from tests.service.conftest import TINY_ARGS, app_client, bearer, new_key, upload_ancestry
from tests.support import REPO, make_settings, service_env, start_server

sqlite_only = pytest.mark.parametrize("backend_settings", ["sqlite"], indirect=True)
HUB_HEAD = "/hub/ancestry-1.random/d12-e768-h12-s77/resolve/main/model.safetensors"


def _count(ctx: AppContext, model: type) -> int:
    with ctx.sessions() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


# --- keys --------------------------------------------------------------------------------------------------------

def test_keys_are_stored_only_as_hashes_and_revoked_keys_stop_working(ctx: AppContext) -> None:
    with app_client(ctx, api_token="boot") as c:
        r = c.post("/v1/keys", json={"owner": "alice", "scopes": ["read", "write"]}, headers=bearer("boot"))
        assert r.status_code == 201, r.text
        created = r.json()
        key = created["key"]
        assert key.startswith("lg_") and len(key) > 40 and created["scopes"] == ["read", "write"]
        with ctx.sessions() as session:
            row = session.scalars(select(ApiKey)).one()
            stored = [str(getattr(row, col.key)) for col in ApiKey.__table__.columns]
        assert not any(key in value or value in key and len(value) > 10 for value in stored)
        listed = c.get("/v1/keys", headers=bearer("boot")).json()["items"]
        assert [k["owner"] for k in listed] == ["alice"] and "key" not in listed[0]

        spec = {"learngene": "none", "spec": {"depth": 2}}
        assert c.post("/v1/descendants", json=spec, headers=bearer(key)).status_code == 404  # past auth
        assert c.post(f"/v1/keys/{created['id']}/revoke", headers=bearer("boot")).json()["revoked_at"]
        r = c.post("/v1/descendants", json=spec, headers=bearer(key))
        assert r.status_code == 401 and "not a valid API key" in r.json()["error"]["message"]


def test_scopes_read_write_admin(ctx: AppContext) -> None:
    with app_client(ctx, api_token="boot") as c:
        reader = new_key(c, "boot", owner="rita", scopes=["read"])
        writer = new_key(c, "boot", owner="will", scopes=["write"])
        spec = {"learngene": "none", "spec": {"depth": 2}}
        assert c.post("/v1/descendants", json=spec, headers=bearer(reader)).status_code == 403
        assert c.post("/v1/descendants", json=spec, headers=bearer(writer)).status_code == 404
        assert c.get("/v1/descendants", headers=bearer(writer)).status_code == 200  # write includes read
        assert c.post("/v1/keys", json={"owner": "x"}, headers=bearer(writer)).status_code == 403
        assert c.get("/v1/keys").status_code == 401
        assert c.get("/v1/learngenes").status_code == 200  # the public registry stays open


def test_reads_need_a_key_when_configured(ctx: AppContext) -> None:
    with app_client(ctx, api_token="boot", require_key_for_reads=True) as c:
        assert c.get("/v1/learngenes").status_code == 401
        assert c.get("/v1/learngenes", headers=bearer("boot")).status_code == 200
        assert c.get("/healthz").status_code == 200


@sqlite_only
def test_any_key_makes_writes_need_a_key_even_without_the_bootstrap_token(ctx: AppContext) -> None:
    from service.keys.schemas import KeyCreate
    from service.keys.service import create_key

    with app_client(ctx) as c:
        spec = {"learngene": "none", "spec": {"depth": 2}}
        assert c.post("/v1/descendants", json=spec).status_code == 404  # open service: anonymous writes
        with ctx.sessions.begin() as session:
            _, key = create_key(session, KeyCreate(owner="first"))
        assert c.post("/v1/descendants", json=spec).status_code == 401
        assert c.post("/v1/descendants", json=spec, headers=bearer(key)).status_code == 404


def test_non_ascii_bearer_token_is_401_not_500(ctx: AppContext) -> None:
    with app_client(ctx, api_token="boot") as c:
        for token in ("bööt", "lg_é" * 10, "\u00ff" * 300):
            # Sent as UTF-8 bytes, as a client that does not check would; Starlette reads headers as latin-1.
            r = c.post("/v1/descendants", json={"learngene": "x"},
                       headers={"Authorization": f"Bearer {token}".encode()})
            assert r.status_code == 401, (token, r.text)


def test_anonymous_hub_requests_produce_nothing_once_keys_are_required(ctx: AppContext,
                                                                      tiny_ancestry_file: Path) -> None:
    """Issue item 1: one anonymous HEAD made a 340 MB descendant; three GETs of config.json made three."""
    with app_client(ctx, api_token="boot") as c:
        c.headers["Authorization"] = "Bearer boot"
        assert upload_ancestry(c, tiny_ancestry_file).status_code == 201
        del c.headers["Authorization"]
        assert c.head(HUB_HEAD).status_code == 401
        for _ in range(3):
            assert c.get("/hub/ancestry-1.random/d2-s1/resolve/main/config.json").status_code == 401
        assert c.get("/hub/api/models/ancestry-1.random/d2-s1").status_code == 401
    assert _count(ctx, DescendantRow) == 0 and _count(ctx, Job) == 0


@sqlite_only
def test_ownership_jobs_of_another_owner_cannot_be_cancelled(ctx: AppContext) -> None:
    """Jobs are private: to another owner, cancelling one is as if it did not exist (404, not 403)."""
    with app_client(ctx, api_token="boot") as c:
        alice = new_key(c, "boot", owner="alice")
        bob = new_key(c, "boot", owner="bob")
        with ctx.sessions.begin() as session:
            session.add(Job(id="a" * 32, kind="expand", queue="cpu", owner="alice"))
        assert c.post(f"/v1/jobs/{'a' * 32}/cancel", headers=bearer(bob)).status_code == 404
        r = c.post(f"/v1/jobs/{'a' * 32}/cancel", headers=bearer(alice))
        assert r.status_code == 200 and r.json()["owner"] == "alice" and r.json()["state"] == "cancelled"


def test_learngene_keys_command_creates_lists_and_revokes(tmp_path: Path) -> None:
    env = service_env(make_settings(tmp_path))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "service.cli", "keys", *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    made = cli("create", "--owner", "carol", "--scopes", "read,write", "--rate", "5", "--upload-bytes-per-day", "1G")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("lg_")
    listing = cli("list")
    assert "carol" in listing.stdout and "read,write" in listing.stdout and key not in listing.stdout
    assert cli("create", "--owner", "x", "--scopes", "root").returncode == 2
    revoked = cli("revoke", key[:10])
    assert revoked.returncode == 0 and "carol) revoked" in revoked.stdout


def test_hub_with_huggingface_hub_sends_hf_token_as_the_key(tmp_path: Path, tiny_ancestry_file: Path) -> None:
    """huggingface_hub (and so timm) sends HF_TOKEN as a bearer token: that is how /hub gets a key."""
    server, url = start_server(make_settings(tmp_path, api_token="boot-hub"), tmp_path)
    try:
        with open(tiny_ancestry_file, "rb") as f:
            r = httpx.post(f"{url}/v1/ancestries", files={"file": ("tiny.safetensors", f)},
                           data={"architecture": "vit_base_patch16_224", "model_args": json.dumps(TINY_ARGS),
                                 "visibility": "public"},
                           headers=bearer("boot-hub"), timeout=120)
        assert r.status_code == 201, r.text
        key = httpx.post(f"{url}/v1/keys", json={"owner": "hub-user"}, headers=bearer("boot-hub")).json()["key"]
        script = ("import sys; from huggingface_hub import hf_hub_download\n"
                  "try:\n"
                  "    print('OK', hf_hub_download('ancestry-1.weight-selection/d2-s3', 'config.json'))\n"
                  "except Exception as exc:\n"
                  "    print('FAILED', type(exc).__name__, getattr(getattr(exc, 'response', None), 'status_code', None))\n")
        base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        base |= {"HF_ENDPOINT": f"{url}/hub", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        without = subprocess.run([sys.executable, "-c", script], env=base, capture_output=True, text=True,
                                 timeout=120)
        assert "FAILED" in without.stdout and "401" in without.stdout, without.stdout + without.stderr
        with_key = subprocess.run([sys.executable, "-c", script], env=base | {"HF_TOKEN": key},
                                  capture_output=True, text=True, timeout=120)
        assert with_key.stdout.startswith("OK"), with_key.stdout + with_key.stderr
        jobs = httpx.get(f"{url}/v1/jobs", headers=bearer(key)).json()["items"]
        assert [j["owner"] for j in jobs] == ["hub-user"]
        assert httpx.get(f"{url}/v1/jobs").json()["items"] == []  # jobs are their owner's
    finally:
        server.stop()


# --- rate limits and quotas --------------------------------------------------------------------------------------

def test_wrong_token_flood_gets_429_with_retry_after(ctx: AppContext) -> None:
    """Issue item 1: 1000 wrong-token POSTs in 1.1 s all got 401, never 429. Wrong tokens share the anonymous
    bucket, so a flood of them is cut off after the burst."""
    # A slow refill so that the count does not depend on how fast this machine sends the flood.
    with app_client(ctx, api_token="boot", anonymous_rate_per_s=0.5, anonymous_burst=50) as c:
        codes = [c.post("/v1/descendants", json={"learngene": "x"}, headers=bearer(f"wrong{i}"))
                 for i in range(300)]
        statuses = [r.status_code for r in codes]
        assert statuses[:50] == [401] * 50
        assert statuses.count(429) >= 240
        limited = next(r for r in codes if r.status_code == 429)
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["code"] == "too_many_requests"
        assert c.get("/healthz").status_code == 200  # probes are never limited
        assert c.get("/v1/learngenes", headers=bearer("boot")).status_code == 200  # a key has its own bucket


def test_anonymous_burst_sees_429_and_keys_are_limited_per_key(ctx: AppContext) -> None:
    with app_client(ctx, api_token="boot", anonymous_rate_per_s=0.5) as c:
        slow = new_key(c, "boot", owner="slow", rate_per_s=0.5, burst=3)
        statuses = [c.get("/v1/learngenes").status_code for _ in range(200)]
        assert 50 <= statuses.count(200) <= 55 and statuses.count(429) >= 145
        keyed = [c.get("/v1/learngenes", headers=bearer(slow)).status_code for _ in range(6)]
        assert keyed.count(200) == 3 and keyed.count(429) == 3


def test_redis_token_bucket_is_shared_by_processes(redis_url: str) -> None:
    """Two API processes on one Redis draw from one bucket (two clients here, as two processes would have)."""
    import asyncio

    from service.limits.counters import RedisCounters

    a, b = RedisCounters(redis_url), RedisCounters(redis_url)

    async def burst() -> list[float]:
        return [await (a if i % 2 else b).take("test:shared", 1.0, 10) for i in range(30)]

    waits = asyncio.run(burst())
    assert sum(1 for w in waits if w == 0) in (10, 11)  # the burst, plus at most one token refilled meanwhile
    assert all(0 < w <= 1.0 for w in waits[12:])
    assert a.charge("upload_bytes", "t", 600, 1000) == (True, 600)
    assert b.charge("upload_bytes", "t", 600, 1000) == (False, 600)
    a.close()
    b.close()


def test_concurrent_jobs_quota(ctx: AppContext, tiny_ancestry_file: Path) -> None:
    with app_client(ctx, api_token="boot") as c:
        key = new_key(c, "boot", owner="busy", max_concurrent_jobs=1)
        assert upload_ancestry_with(c, tiny_ancestry_file, "boot", visibility="public").status_code == 201
        with ctx.sessions.begin() as session:  # a job of theirs that is still queued
            session.add(Job(id="b" * 32, kind="condense", queue="gpu", owner="busy"))
        body = {"ancestry": 1, "method": "random", "spec": {"depth": 2}}
        r = c.post("/v1/descendants", json=body, headers=bearer(key))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1, r.text
        assert _count(ctx, DescendantRow) == 0
        assert c.post("/v1/descendants", json=body, headers=bearer("boot")).status_code in (201, 202)


def _racer(limits: dict[str, int]) -> Any:
    from service.keys.auth import Limits, Principal

    return Principal(bucket="key:1", owner="racer", scopes=frozenset({"read", "write"}),
                     limits=Limits(**{"rate_per_s": 1.0, "burst": 1, "max_concurrent_jobs": 9,
                                      "descendant_bytes_per_day": 1, "upload_bytes_per_day": 1, **limits}))


def _second_submission_waits_for_the_first(ctx: AppContext, check: Any, job: Job) -> str:
    """A first submission passes ``check`` and inserts ``job`` without committing; a second one, in a thread,
    runs ``check`` meanwhile. Asserts the second waits for the first's commit; returns what it then got."""
    import threading

    from service.errors import TooManyRequests

    outcome: list[str] = []

    def second() -> None:
        with ctx.sessions() as session:
            try:
                check(session)
                outcome.append("admitted")
            except TooManyRequests:
                outcome.append("refused")

    # Closed whatever happens: a transaction left open would block the next test's schema reset.
    with ctx.sessions() as first:
        check(first)
        first.add(job)
        first.flush()  # inserted, not yet committed
        racer = threading.Thread(target=second)
        racer.start()
        racer.join(1.0)
        assert racer.is_alive() and not outcome  # waiting for the first submission to end
        first.commit()
    racer.join(30)
    assert len(outcome) == 1
    return outcome[0]


def test_two_submissions_at_once_cannot_both_take_an_owners_last_job_slot(ctx: AppContext) -> None:
    """Regression: the slot check counted the owner's active jobs and the job was inserted later, so two requests
    at once both counted the one free slot and both queued (one job over the quota). Now the second waits for the
    first to commit, counts its job and is refused."""
    from service.limits.quotas import admit

    caller = _racer({"max_concurrent_jobs": 1})
    job = Job(id="a" * 32, kind="condense", queue="cpu", owner="racer")
    assert _second_submission_waits_for_the_first(ctx, lambda s: admit(s, caller), job) == "refused"


def upload_ancestry_with(c: TestClient, path: Path, key: str, visibility: str = "private") -> httpx.Response:
    with open(path, "rb") as f:
        return c.post("/v1/ancestries", files={"file": ("tiny.safetensors", f)}, headers=bearer(key),
                      data={"architecture": "vit_base_patch16_224", "model_args": json.dumps(TINY_ARGS),
                            "visibility": visibility})


def test_descendant_bytes_and_upload_bytes_per_day(ctx: AppContext, tiny_ancestry_file: Path) -> None:
    size = tiny_ancestry_file.stat().st_size
    with app_client(ctx, api_token="boot") as c:
        key = new_key(c, "boot", owner="thrifty", descendant_bytes_per_day=100_000,
                       upload_bytes_per_day=size + 2000)
        assert upload_ancestry_with(c, tiny_ancestry_file, key).status_code == 201
        r = upload_ancestry_with(c, tiny_ancestry_file, key)  # refused at Content-Length, before reading
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "upload" in r.text
        small = {"ancestry": 1, "method": "random", "spec": {"depth": 1, "embed_dim": 16, "num_heads": 1}}
        assert c.post("/v1/descendants?wait=0", json=small, headers=bearer(key)).status_code in (201, 202)
        big = {"ancestry": 1, "method": "random", "spec": {"depth": 4}}  # ~50k parameters: 200 kB
        r = c.post("/v1/descendants", json=big, headers=bearer(key))
        assert r.status_code == 429 and "descendant bytes" in r.text
        with ctx.sessions() as session:
            assert session.scalar(select(func.count()).select_from(DescendantRow)) == 1
            assert session.scalars(select(Job.owner)).all() == ["thrifty"]


def test_a_failed_expansion_gives_its_descendant_bytes_back(ctx: AppContext, tiny_ancestry_file: Path) -> None:
    """Regression: the bytes were charged to a counter before the job existed and never given back, so an
    expansion that failed (storage lost its source) still used the day's quota, and asking again once the source
    was back was refused. Now the charge is the job's, and a failed job charges nothing."""
    from service.descendants import tasks as expand

    with app_client(ctx, api_token="boot") as c:
        assert upload_ancestry_with(c, tiny_ancestry_file, "boot", visibility="public").status_code == 201
        small = {"ancestry": 1, "method": "random", "spec": {"depth": 1, "embed_dim": 16, "num_heads": 1}}
        first = c.post("/v1/descendants?wait=60", json={**small, "seed": 7}, headers=bearer("boot"))
        assert first.status_code == 201, first.text
        nbytes = first.json()["param_count"] * 4
        key = new_key(c, "boot", owner="unlucky", descendant_bytes_per_day=nbytes + nbytes // 2)
        with ctx.sessions() as session:
            path = ctx.store.local_path(session.scalars(select(Ancestry.storage_key)).one())
        saved = path.read_bytes()
        path.write_bytes(b"lost")  # storage lost the ancestry's bytes
        expand._cache.clear()  # workers keep sources they read in memory: this one must be read again
        r = c.post("/v1/descendants?wait=60", json=small, headers=bearer(key))
        assert r.status_code == 500 and r.json()["error"]["code"] == "job_failed", r.text
        (quota,) = c.get("/v1/usage", headers=bearer(key)).json()["owners"][0]["quotas"]
        assert quota["descendant_bytes_used_today"] == 0

        path.write_bytes(saved)
        r = c.post("/v1/descendants?wait=60", json=small, headers=bearer(key))
        assert r.status_code == 201 and r.json()["status"] == "ready", r.text  # before the fix: 429
        (quota,) = c.get("/v1/usage", headers=bearer(key)).json()["owners"][0]["quotas"]
        assert quota["descendant_bytes_used_today"] == nbytes
        r = c.post("/v1/descendants", json={**small, "seed": 1}, headers=bearer(key))
        assert r.status_code == 429 and "descendant bytes" in r.text  # the quota itself still holds


def test_descendant_bytes_count_todays_jobs_that_did_not_fail_or_get_cancelled(ctx: AppContext) -> None:
    """The day's descendant bytes are the registry's: jobs of the bucket created since midnight (UTC), less
    the failed and cancelled ones; other buckets and yesterday's jobs do not count."""
    import datetime as dt

    from service.errors import TooManyRequests
    from service.limits.quotas import admit, descendant_bytes_used
    from service.models import utcnow

    now = utcnow()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    charged = [("queued", now, "key:1", 100), ("running", now, "key:1", 20), ("succeeded", now, "key:1", 3),
               ("failed", now, "key:1", 4000), ("cancelled", now, "key:1", 50000),
               ("succeeded", midnight - dt.timedelta(seconds=1), "key:1", 600000), ("succeeded", now, "key:2", 7)]
    with ctx.sessions.begin() as session:
        for i, (state, created, bucket, nbytes) in enumerate(charged):
            session.add(Job(id=f"{i:032d}", kind="expand", queue="cpu", owner="o", state=state, created_at=created,
                            quota_bucket=bucket, charged_bytes=nbytes))
        session.add(Job(id="u" * 32, kind="condense", queue="cpu", owner="o"))  # charges nothing
    caller = _racer({"descendant_bytes_per_day": 200})
    with ctx.sessions() as session:
        assert descendant_bytes_used(session, "key:1") == 123
        assert descendant_bytes_used(session, "key:2") == 7 and descendant_bytes_used(session, "key:3") == 0
        assert admit(session, caller, 77) == ("key:1", 77)  # exactly the limit
        with pytest.raises(TooManyRequests) as refused:
            admit(session, caller, 78)
        assert refused.value.details[0].field == "spec" and "123 of 200" in str(refused.value)


def test_two_expansions_at_once_cannot_both_take_the_days_last_descendant_bytes(ctx: AppContext) -> None:
    """The bytes check is serialized with the caller's other submissions: the second waits for the first to
    commit its charged job, counts it and is refused."""
    from service.limits.quotas import admit

    caller = _racer({"descendant_bytes_per_day": 200})
    job = Job(id="a" * 32, kind="expand", queue="cpu", owner="racer", quota_bucket="key:1", charged_bytes=150)
    outcome = _second_submission_waits_for_the_first(ctx, lambda s: admit(s, caller, 100), job)
    assert outcome == "refused"


# --- bounded inputs ----------------------------------------------------------------------------------------------

TOKENS: list[Any] = [{"after": True}, {"after": {}}, {"after": []}, {"after": [1]}, {"after": 10**30},
                     {"after": -1}, {"after": 2**63}, {"after": "x" * 300}, {"after": "\u0000"}, {}, [], "x", 1,
                     {"after": 1.5}]


def _token(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def test_crafted_page_tokens_are_4xx_on_every_list(client: TestClient) -> None:
    lists = ["/v1/learngenes", "/v1/descendants", "/v1/ancestries", "/v1/datasets", "/v1/jobs",
             "/v1/learngenes/none/versions"]
    for path in lists:
        for value in TOKENS:
            r = client.get(path, params={"page_token": _token(value)})
            assert 400 <= r.status_code < 500, (path, value, r.status_code, r.text)
        for raw in ("%%%", "é" * 10, "a" * 5000, _token(["x"] * 10000)[:999]):
            assert 400 <= client.get(path, params={"page_token": raw}).status_code < 500


def test_ids_past_the_database_range_are_4xx(ctx: AppContext, client: TestClient) -> None:
    """SQLite overflows at 2^63, PostgreSQL's int at 2^31: each id is bounded before any query."""
    with ctx.sessions.begin() as session:  # rows to get past the "not found" of the name or id in front
        session.add(LearngeneRow(name="x", method="tleg"))
        session.add(Ancestry(name="a", architecture="vit", model_args={}, spec={}, param_count=1, sha256="0" * 64,
                             size_bytes=1, storage_key="none"))
    for big in (2**31, 2**63, 10**30):
        for path in (f"/v1/descendants/{big}", f"/v1/descendants/{big}/weights", f"/v1/ancestries/{big}",
                     f"/v1/datasets/{big}", f"/v1/learngenes/x/versions/{big}",
                     f"/v1/learngenes/x/versions/{big}/tensors"):
            assert client.get(path).status_code in (404, 422), path
        assert client.get("/v1/descendants", params={"ancestry": big}).status_code == 422
        assert client.get("/v1/descendants", params={"learngene": "x", "version": big}).status_code == 422
        for body in ({"ancestry": big, "method": "random"}, {"learngene": f"x:{big}"}):
            assert client.post("/v1/descendants", json=body).status_code in (404, 422), body
        condense = {"ancestry": big, "method": "tleg", "learngene": "x", "mode": "fit", "evaluate": False}
        assert client.post("/v1/condense-jobs", json=condense).status_code == 422
        condense |= {"ancestry": 1, "dataset": f"dataset:{big}", "mode": "train"}
        assert client.post("/v1/condense-jobs", json=condense).status_code in (404, 422)
        assert client.get(f"/hub/ancestry-{big}.random/d2/resolve/main/config.json").status_code == 404
    assert client.get("/v1/learngenes/x/versions/\u00b2").status_code == 404  # "²".isdigit() is True


def test_nul_and_control_characters_never_reach_the_database(client: TestClient) -> None:
    assert client.get("/v1/jobs/abc%00def").status_code == 400
    assert client.get("/v1/jobs", params={"kind": "a\u0000b"}).status_code == 400
    assert client.get("/v1/learngenes/a%01b").status_code == 404
    r = client.post("/v1/descendants", json={"learngene": "a\u0000b"})
    assert r.status_code == 422


def test_options_and_405_name_every_method_of_the_path(client: TestClient) -> None:
    """Issue item 7: OPTIONS answered ``allow: POST`` on a path that also has GET."""
    for method in ("OPTIONS", "PUT", "DELETE", "PATCH"):
        r = client.request(method, "/v1/descendants")
        assert r.status_code == 405 and r.headers["allow"] == "GET, POST", (method, r.headers)
    assert client.options("/v1/descendants/1").headers["allow"] == "DELETE, GET, PATCH"  # issue 21 added two


def test_malformed_json_is_a_declared_4xx(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for body in (b"{", b"\xff\xfe", b"[" * 100_000, b'{"learngene": "x", "seed": 1e999}'):
        r = client.post("/v1/descendants", content=body, headers={"content-type": "application/json"})
        assert r.status_code in (400, 422), (body[:20], r.status_code)
        assert str(r.status_code) in spec["paths"]["/v1/descendants"]["post"]["responses"]


def _raw_http(url: str, head: bytes, body_chunks: Iterator[bytes]) -> tuple[int, int]:
    """Send a request by hand; returns (status, body bytes we managed to send before the answer came)."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head)
        s.settimeout(0.05)
        answer = b""
        for chunk in body_chunks:
            try:
                s.sendall(chunk)
                sent += len(chunk)
            except OSError:
                break
            try:
                answer += s.recv(4096)
            except (TimeoutError, BlockingIOError):
                continue
            if answer:
                break
        s.settimeout(30)
        while b"\r\n" not in answer:
            answer += s.recv(4096)
    return int(answer.split(b" ")[1]), sent


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("abuse-live")
    server, url = start_server(make_settings(tmp), tmp)
    try:
        yield url
    finally:
        server.stop()


def test_body_caps_refuse_at_content_length_and_while_streaming(live_server: str) -> None:
    """Issue item 3: a 2 GiB upload was read to the end (and +4 GB in /tmp chunked) before the 413."""
    port = live_server.rsplit(":", 1)[1]
    status, _ = _raw_http(live_server, (
        f"POST /v1/ancestries HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; "
        f"boundary=x\r\nContent-Length: {3 * 1024**3}\r\n\r\n").encode(), iter([b"--x\r\n"]))
    assert status == 413
    mib = b"a" * 1024 * 1024
    status, sent = _raw_http(live_server, (
        f"POST /v1/descendants HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n").encode(),
        (b"%x\r\n%s\r\n" % (len(mib), mib) for _ in range(64)))
    assert status == 413 and sent < 16 * 1024 * 1024, sent
    status, _ = _raw_http(live_server, (
        f"POST /v1/datasets HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; "
        "boundary=x\r\nTransfer-Encoding: chunked\r\n\r\n").encode(), iter([b"5\r\n--x\r\n\r\n"]))
    assert status == 411


# --- archives ----------------------------------------------------------------------------------------------------

def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, format="PNG")
    return buf.getvalue()


def _tar(members: list[tuple[str, bytes]], gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def _falsified_zip() -> bytes:
    """A zip whose headers claim each member is 10 bytes while it holds 100 kB."""
    data = bytearray(_zip([("a/1.png", _png() + b"\0" * 100_000), ("b/1.png", _png())]))
    real = len(_png()) + 100_000
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):
        offset = 0
        while (offset := data.find(sig, offset)) != -1:
            size_at = offset + (22 if sig == b"PK\x03\x04" else 24)
            if int.from_bytes(data[size_at:size_at + 4], "little") == real:
                data[size_at:size_at + 4] = (10).to_bytes(4, "little")
            offset += 4
    return bytes(data)


def _dataset_files(ctx: AppContext) -> list[Path]:
    root = ctx.settings.artifact_root
    return [p for p in root.rglob("*") if p.is_file() and ("datasets" in p.parts or p.parent.name == "tmp")]


HOSTILE_ARCHIVES = {
    "member_with_300_character_name": lambda: _tar([("a/" + "n" * 300 + ".png", _png()), ("b/1.png", _png())]),
    "file_then_folder_of_the_same_name": lambda: _tar([("c", b"x"), ("c/1.png", _png()), ("d/1.png", _png())]),
    "zip_with_falsified_sizes": _falsified_zip,
    "random_bytes_named_png": lambda: _zip([("a/1.png", os.urandom(2000)), ("b/1.png", _png())]),
    "truncated_tar_gz": lambda: _tar([("a/1.png", _png()), ("b/1.png", _png())], gz=True)[:60],
    "twenty_thousand_tiny_files": lambda: _tar([(f"c{i % 2}/{i}.png", b"") for i in range(20_000)], gz=True),
}


# Archives are checked before the database is involved: one backend is enough.
@sqlite_only
@pytest.mark.parametrize("kind", sorted(HOSTILE_ARCHIVES))
def test_hostile_dataset_archives_are_refused_and_leave_nothing(ctx: AppContext, kind: str) -> None:
    archive = HOSTILE_ARCHIVES[kind]()
    with app_client(ctx) as c:
        r = c.post("/v1/datasets", files={"file": (f"{kind}.tar", archive)})
    assert r.status_code == 422, (kind, r.status_code, r.text)
    assert r.json()["error"]["details"][0]["field"] == "file"
    assert _count(ctx, DatasetRow) == 0
    assert _dataset_files(ctx) == []
