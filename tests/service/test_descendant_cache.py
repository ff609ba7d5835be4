"""Descendants are a cache with a byte budget (issue 21, item 3), on local and S3 (moto) storage: the least
recently used unpinned descendants lose their weights past LEARNGENE_DESCENDANT_CACHE_BYTES, and the next download
or request makes them again, byte for byte (the recorded sha256 is checked; a mismatch is never served)."""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from service.context import AppContext
from service.descendants.cache import enforce_budget
from service.models import DescendantRow
from service.settings import Settings
from tests.service.conftest import app_client, context_on_storage, bearer, condense_fit, new_key, upload_ancestry, wait_job
from tests.service.test_s3_storage import bucket, s3_endpoint  # noqa: F401  (fixtures)
from tests.support import UNTHROTTLED

SPEC = {"depth": 2}


@pytest.fixture(params=["local", "s3"])
def cache_ctx(request: pytest.FixtureRequest, backend_settings: Settings) -> Iterator[AppContext]:
    context = context_on_storage(request, backend_settings)
    yield context
    context.close()


@pytest.fixture
def c(cache_ctx: AppContext, tiny_ancestry_file: Path) -> Iterator[TestClient]:
    with app_client(cache_ctx, **UNTHROTTLED) as client:
        condense_fit(client, upload_ancestry(client, tiny_ancestry_file).json()["id"], "tleg", "lg")
        yield client


def _make(c: TestClient, seed: int) -> dict[str, Any]:
    r = c.post("/v1/descendants", params={"wait": 60}, json={"learngene": "lg", "spec": SPEC, "seed": seed})
    assert r.status_code in (200, 201), r.text
    return r.json()  # type: ignore[no-any-return]


def _stored(ctx: AppContext, sha256: str) -> bool:
    return ctx.store.exists(f"sha256/{sha256[:2]}/{sha256}")


def _status(c: TestClient, desc: dict[str, Any]) -> str:
    return str(c.get(f"/v1/descendants/{desc['id']}").json()["status"])


def _download(c: TestClient, desc: dict[str, Any]) -> bytes:
    """The weights; evicted ones answer 503 while a job makes them again."""
    r = c.get(desc["weights_url"])
    if r.status_code == 503:
        assert "evicted" in r.json()["error"]["message"] and r.headers["retry-after"]
        job = wait_job(c, c.get(f"/v1/descendants/{desc['id']}").json()["job_id"])
        assert job["state"] == "succeeded", job
        r = c.get(desc["weights_url"])
    assert r.status_code == 200, r.text
    return r.content


def test_least_recently_used_weights_are_evicted_past_the_budget_and_come_back_identical(
        c: TestClient, cache_ctx: AppContext) -> None:
    a = _make(c, 0)
    budget = int(2.5 * a["size_bytes"])  # room for two descendants of this size
    cache_ctx.settings.descendant_cache_bytes = budget
    b = _make(c, 1)
    original_b = _download(c, b)
    _download(c, a)  # a is now used more recently than b
    d = _make(c, 2)  # no room for three: b, the least recently used, loses its weights
    assert [_status(c, x) for x in (a, b, d)] == ["ready", "evicted", "ready"]
    assert not _stored(cache_ctx, b["sha256"]) and _stored(cache_ctx, a["sha256"]) and _stored(cache_ctx, d["sha256"])
    assert c.get(f"/v1/descendants/{b['id']}").json()["sha256"] == b["sha256"]  # the row stays, sha256 and all
    assert c.get(f"/v1/descendants/{b['id']}/metadata").status_code == 409
    assert c.get(f"/v1/descendants/{b['id']}/config").status_code == 200

    # A pinned descendant is never evicted, however old.
    pin = c.patch(f"/v1/descendants/{a['id']}", json={"pinned": True})
    assert pin.status_code == 200 and pin.json()["pinned"] is True
    regenerated = _download(c, b)  # b comes back (evicting d: a is pinned)
    assert hashlib.sha256(regenerated).hexdigest() == b["sha256"] and regenerated == original_b
    assert [_status(c, x) for x in (a, b, d)] == ["ready", "ready", "evicted"]
    # /hub (timm's hf-hub: loading) makes evicted weights again too, identical; and so does the same request.
    hub = c.get(f"/hub/{d['hub_repo_id']}/resolve/main/model.safetensors")
    assert hub.status_code == 200 and hashlib.sha256(hub.content).hexdigest() == d["sha256"]
    assert [_status(c, x) for x in (a, b, d)] == ["ready", "evicted", "ready"]
    again = _make(c, 1)  # b's own request makes b again (and d, now the least recently used, goes)
    assert again["id"] == b["id"] and again["status"] == "ready" and again["sha256"] == b["sha256"]
    assert [_status(c, x) for x in (a, b, d)] == ["ready", "ready", "evicted"]
    assert _stored(cache_ctx, b["sha256"]) and not _stored(cache_ctx, d["sha256"])

    # A budget lowered later is enforced by the maintenance loop's housekeeping; pinned ones stay.
    cache_ctx.settings.descendant_cache_bytes = 1
    assert sorted(enforce_budget(cache_ctx)) == [b["id"]]
    assert [_status(c, x) for x in (a, b, d)] == ["ready", "evicted", "evicted"]
    assert c.patch(f"/v1/descendants/{a['id']}", json={"pinned": "yes"}).status_code == 422


@pytest.mark.parametrize("cache_ctx", ["local"], indirect=True)
@pytest.mark.parametrize("backend_settings", ["sqlite"], indirect=True)
def test_weights_made_again_with_another_sha256_are_an_error_never_served(
        c: TestClient, cache_ctx: AppContext, caplog: pytest.LogCaptureFixture) -> None:
    a = _make(c, 0)
    cache_ctx.settings.descendant_cache_bytes = 1
    _make(c, 1)  # evicts a
    assert _status(c, a) == "evicted"
    recorded = "0" * 64  # as if the engine had drifted since a was made: its bytes no longer match
    with cache_ctx.sessions.begin() as session:
        session.execute(update(DescendantRow).where(DescendantRow.id == a["id"]).values(sha256=recorded))
    with caplog.at_level(logging.ERROR, logger="service.descendants.tasks"):
        r = c.get(a["weights_url"])
        assert r.status_code == 503
        job = wait_job(c, c.get(f"/v1/descendants/{a['id']}").json()["job_id"])
    assert job["state"] == "failed" and job["error_code"] == "not_reproducible"
    assert any("NOT REPRODUCIBLE" in rec.getMessage() and rec.levelno == logging.ERROR for rec in caplog.records)
    r = c.get(a["weights_url"])
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    out = c.get(f"/v1/descendants/{a['id']}").json()
    assert out["status"] == "failed" and out["sha256"] == recorded and "does not match" in out["error"]
    assert not _stored(cache_ctx, a["sha256"])  # the bytes made again were discarded


@pytest.mark.parametrize("backend_settings", ["sqlite"], indirect=True)
def test_only_the_descendants_owner_its_sources_owner_or_an_admin_pins_it(ctx: AppContext,
                                                                          tiny_ancestry_file: Path) -> None:
    with app_client(ctx, api_token="boot", **UNTHROTTLED) as c:
        alice, bob, carol = (new_key(c, "boot", owner=o) for o in ("alice", "bob", "carol"))
        c.headers.update(bearer(alice))
        ancestry = upload_ancestry(c, tiny_ancestry_file).json()["id"]
        r = c.post("/v1/condense-jobs", json={"ancestry": ancestry, "method": "tleg", "learngene": "lg",
                                              "mode": "fit", "evaluate": False, "visibility": "public"})
        assert wait_job(c, r.json()["id"])["state"] == "succeeded"
        del c.headers["Authorization"]
        r = c.post("/v1/descendants", params={"wait": 60}, json={"learngene": "lg", "spec": SPEC},
                   headers=bearer(bob))
        desc = r.json()
        assert desc["owner"] == "bob" and desc["pinned"] is False
        assert c.patch(f"/v1/descendants/{desc['id']}", json={"pinned": True},
                       headers=bearer(carol)).status_code == 403
        assert c.patch(f"/v1/descendants/{desc['id']}", json={"pinned": True}).status_code == 401
        for key in (bob, alice, "boot"):
            assert c.patch(f"/v1/descendants/{desc['id']}", json={"pinned": True},
                           headers=bearer(key)).status_code == 200


@pytest.mark.parametrize("cache_ctx", ["local"], indirect=True)
@pytest.mark.parametrize("backend_settings", ["sqlite"], indirect=True)
def test_weights_being_made_again_answer_503_until_they_are_there(c: TestClient, cache_ctx: AppContext) -> None:
    """Regression: the second GET of evicted weights (its job still queued or running) was a 409 "pending", which
    the SDK's download, waiting through 503s, took for a failure."""
    from service.jobs.service import publish

    a = _make(c, 0)
    cache_ctx.settings.descendant_cache_bytes = 1
    _make(c, 1)  # evicts a
    dispatcher, cache_ctx.dispatcher = cache_ctx.dispatcher, None  # the job stays queued: no worker takes it
    try:
        first, second = c.get(a["weights_url"]), c.get(a["weights_url"])
    finally:
        cache_ctx.dispatcher = dispatcher
    assert first.status_code == 503 and second.status_code == 503, second.text
    assert second.headers["retry-after"] and "being made again" in second.json()["error"]["message"]
    job_id = c.get(f"/v1/descendants/{a['id']}").json()["job_id"]
    publish(cache_ctx, job_id, "cpu")
    assert wait_job(c, job_id)["state"] == "succeeded"
    assert hashlib.sha256(c.get(a["weights_url"]).content).hexdigest() == a["sha256"]
