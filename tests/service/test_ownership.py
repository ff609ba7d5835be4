"""Owners own what they make (issue "Owners own what they make", items 1-3): two write keys, alice and bob, an
admin, and anonymous callers, against one registry.

* A learngene's versions (and so its ``latest``) are published by its owner or an admin only: 403 to others who
  can see it, 404 to those who cannot.
* Uploaded ancestries and datasets, and learngenes made with a key, are private unless made public: to anyone
  else they do not exist, on every route that reads or uses them, directly or not.
* Revoking a key ends the event stream it holds open.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.context import AppContext
from service.db import unit_of_work
from service.errors import Conflict
from service.learngenes.service import publish_version
from service.models import Job, LearngeneRow
from service.ownership import SYSTEM_OWNER
from tests.service.conftest import ARCH, TINY_ARGS, app_client, bearer, new_key, wait_job
from tests.support import make_settings, start_server

sqlite_only = pytest.mark.parametrize("backend_settings", ["sqlite"], indirect=True)


def _upload(c: TestClient, path: Path, key: str, **fields: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        r = c.post("/v1/ancestries", headers=bearer(key), files={"file": ("tiny.safetensors", f)},
                   data={"architecture": ARCH, "model_args": json.dumps(TINY_ARGS), **fields})
    assert r.status_code in (200, 201), r.text
    return r.json()  # type: ignore[no-any-return]


def _condense(c: TestClient, key: str, ancestry: int, name: str, **extra: Any) -> httpx.Response:
    return c.post("/v1/condense-jobs", headers=bearer(key), json={
        "ancestry": ancestry, "method": "tleg", "learngene": name, "mode": "fit", "evaluate": False, **extra})


def _fitted(c: TestClient, key: str, ancestry: int, name: str, **extra: Any) -> dict[str, Any]:
    r = _condense(c, key, ancestry, name, **extra)
    assert r.status_code == 202, r.text
    c.headers.update(bearer(key))  # jobs are their owner's to follow
    try:
        job = wait_job(c, r.json()["id"])
    finally:
        del c.headers["Authorization"]
    assert job["state"] == "succeeded", job
    return job


def _latest(c: TestClient, name: str) -> dict[str, Any]:
    r = c.get(f"/v1/learngenes/{name}/versions/latest", headers=bearer("boot"))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


@sqlite_only
def test_only_the_owner_or_an_admin_publishes_versions_of_a_learngene(ctx: AppContext,
                                                                      tiny_ancestry_file: Path) -> None:
    """Item 1: bob's condense job into ``alice-tleg`` was accepted, and its version 2 took ``latest``."""
    with app_client(ctx, api_token="boot") as c:
        alice, bob = new_key(c, "boot", owner="alice"), new_key(c, "boot", owner="bob")
        a_anc, b_anc = _upload(c, tiny_ancestry_file, alice)["id"], _upload(c, tiny_ancestry_file, bob)["id"]
        _fitted(c, alice, a_anc, "alice-tleg", visibility="public")
        _fitted(c, alice, a_anc, "alice-secret")
        with unit_of_work(ctx.sessions) as uow:  # as the first start seeds digits-tleg: the system's, public
            publish_version(uow.session, name="digits-tleg", method="tleg", description="", ancestry_id=None,
                            job_id=None, dataset=None, mode="fit", hyperparams={}, metrics={}, meta={},
                            sha256="ab" * 32, size_bytes=1, storage_key="none", owner=SYSTEM_OWNER,
                            visibility="public")
        owners = {lg["name"]: (lg["owner"], lg["visibility"])
                  for lg in c.get("/v1/learngenes", headers=bearer("boot")).json()["items"]}
        assert owners == {"alice-tleg": ("alice", "public"), "alice-secret": ("alice", "private"),
                          "digits-tleg": (SYSTEM_OWNER, "public")}

        for name in ("alice-tleg", "digits-tleg"):
            r = _condense(c, bob, b_anc, name)
            assert r.status_code == 403, r.text
            assert r.json()["error"]["details"][0]["field"] == "learngene"
        r = _condense(c, bob, b_anc, "alice-secret")  # private: not even its existence is told
        assert r.status_code == 404 and r.json()["error"]["details"][0]["field"] == "learngene", r.text
        with ctx.sessions() as session:
            assert session.scalars(select(Job.owner).where(Job.kind == "condense")).all() == ["alice", "alice"]
        assert _latest(c, "alice-tleg")["version"] == 1 and _latest(c, "digits-tleg")["version"] == 1

        _fitted(c, "boot", b_anc, "alice-tleg")  # an admin may: the version is alice's learngene's
        assert _latest(c, "alice-tleg")["version"] == 2
        assert c.get("/v1/learngenes/alice-tleg").json()["owner"] == "alice"
        _fitted(c, bob, b_anc, "bob-tleg")
        assert c.get("/v1/learngenes/bob-tleg", headers=bearer(bob)).json()["owner"] == "bob"


@sqlite_only
def test_a_version_is_refused_when_another_owner_took_the_name_meanwhile(ctx: AppContext) -> None:
    """Two owners' jobs racing for one new name: the second to finish does not become a version of the first's."""
    common = dict(method="tleg", description="", ancestry_id=None, job_id=None, dataset=None, mode="fit",
                  hyperparams={}, metrics={}, meta={}, sha256="ab" * 32, size_bytes=1, storage_key="none")
    with unit_of_work(ctx.sessions) as uow:
        publish_version(uow.session, name="raced", owner="alice", visibility=None, **common)  # type: ignore[arg-type]
    with pytest.raises(Conflict), unit_of_work(ctx.sessions) as uow:
        publish_version(uow.session, name="raced", owner="bob", visibility=None, **common)  # type: ignore[arg-type]
    with ctx.sessions() as session:
        lg = session.scalars(select(LearngeneRow)).one()
        assert (lg.owner, lg.visibility, len(lg.versions)) == ("alice", "private", 1)


def test_private_things_are_not_found_by_others_wherever_they_are_used(ctx: AppContext,
                                                                        tiny_ancestry_file: Path) -> None:
    """Item 2: bob asked for a descendant of alice's ancestry at its own size and got her weights, bit for bit.
    Private ancestries, datasets, learngenes and jobs are 404 to others on every route that reads or uses them,
    listings and lineage included; their owner and admins see them."""
    with app_client(ctx, api_token="boot") as c:
        alice, bob = new_key(c, "boot", owner="alice"), new_key(c, "boot", owner="bob")
        anc = _upload(c, tiny_ancestry_file, alice)
        assert (anc["owner"], anc["visibility"]) == ("alice", "private")
        a = anc["id"]
        same_size = {"ancestry": a, "method": "weight-selection", "spec": {}}
        r = c.post("/v1/descendants?wait=30", json=same_size, headers=bearer(alice))
        assert r.status_code == 201, r.text
        mine = r.json()
        job = _fitted(c, alice, a, "alice-secret")
        _fitted(c, alice, a, "alice-public", visibility="public")
        r = c.post("/v1/descendants?wait=30", json={"learngene": "alice-secret", "spec": {"depth": 2}},
                   headers=bearer(alice))
        assert r.status_code == 201, r.text
        secret_descendant = r.json()["id"]

        hidden = [
            ("GET", f"/v1/ancestries/{a}"), ("GET", f"/v1/descendants/{mine['id']}"),
            ("GET", f"/v1/descendants/{mine['id']}/weights"), ("GET", f"/v1/descendants/{mine['id']}/config"),
            ("GET", f"/v1/descendants/{mine['id']}/metadata"), ("GET", f"/v1/descendants/{secret_descendant}"),
            ("GET", "/v1/learngenes/alice-secret"), ("GET", "/v1/learngenes/alice-secret/versions"),
            ("GET", "/v1/learngenes/alice-secret/versions/1"), ("GET", "/v1/learngenes/alice-secret/versions/1/tensors"),
            ("GET", "/v1/descendants?learngene=alice-secret"),
            ("GET", f"/v1/jobs/{job['id']}"), ("GET", f"/v1/jobs/{job['id']}/events?timeout_s=1"),
            ("GET", f"/v1/jobs/{job['id']}/loss"), ("GET", f"/v1/jobs/{job['id']}/loss.png"),
            ("POST", f"/v1/jobs/{job['id']}/cancel"),
            ("GET", f"/hub/ancestry-{a}.weight-selection/d2/resolve/main/config.json"),
            ("GET", "/hub/alice-secret/d2/resolve/main/model.safetensors"),
            ("GET", "/hub/api/models/alice-secret.v1/d2"),
        ]
        posts = [("/v1/descendants", same_size, "ancestry"),
                 ("/v1/descendants", {"learngene": "alice-secret:1", "spec": {"depth": 2}}, "learngene"),
                 ("/v1/condense-jobs", {"ancestry": a, "method": "tleg", "learngene": "bobs", "mode": "fit"},
                  "ancestry")]
        for stranger in (bob, None):
            headers = bearer(stranger) if stranger else {}
            for method, path in hidden:
                r = c.request(method, path, headers=headers)
                writes = method == "POST" or path.startswith("/hub")  # /hub may produce: it needs a key
                assert r.status_code == (404 if stranger or not writes else 401), (stranger, path, r.text)
            for path, body, field in posts if stranger else []:
                r = c.post(path, json=body, headers=headers)
                assert r.status_code == 404 and r.json()["error"]["details"][0]["field"] == field, (path, r.text)
            for listing in ("/v1/ancestries", "/v1/descendants", "/v1/jobs", "/v1/learngenes"):
                assert c.get(listing, headers=headers).json()["items"] in ([], [_public_lg(c, headers)]), listing
            # A public learngene made from a private ancestry: its lineage does not lead there.
            lineage = c.get("/v1/learngenes/alice-public/versions/1", headers=headers).json()["lineage"]
            assert lineage["ancestry_id"] is None and lineage["ancestry_name"] is None and lineage["job_id"] is None
        assert c.get("/v1/learngenes/alice-public/versions/1", headers=bearer(alice)).json()["lineage"][
            "ancestry_id"] == a
        assert c.post("/v1/descendants", json={"learngene": "alice-public", "spec": {"depth": 2}},
                      headers=bearer(bob)).status_code in (200, 201, 202)

        for owner_or_admin in (alice, "boot"):
            for method, path in hidden[:12]:
                assert c.request(method, path, headers=bearer(owner_or_admin)).status_code == 200, path
            assert len(c.get("/v1/ancestries", headers=bearer(owner_or_admin)).json()["items"]) == 1
        assert len(c.get("/v1/jobs", headers=bearer("boot")).json()["items"]) >= 4


def _public_lg(c: TestClient, headers: dict[str, str]) -> Any:
    return next(iter(c.get("/v1/learngenes", headers=headers).json()["items"]), None)


@sqlite_only
def test_private_datasets_are_not_found_by_others(ctx: AppContext, tiny_ancestry_file: Path) -> None:
    from tests.service.test_datasets_api import _digit_images, _zip

    with app_client(ctx, api_token="boot") as c:
        alice, bob = new_key(c, "boot", owner="alice"), new_key(c, "boot", owner="bob")
        archive = _zip(_digit_images())
        ids = {}
        for visibility in ("private", "public"):
            r = c.post("/v1/datasets", files={"file": ("d.zip", archive)}, data={"visibility": visibility},
                       headers=bearer(alice))
            assert r.status_code == 201 and r.json()["visibility"] == visibility, r.text
            ids[visibility] = r.json()["id"]
        assert c.get(f"/v1/datasets/{ids['private']}", headers=bearer(bob)).status_code == 404
        assert [d["id"] for d in c.get("/v1/datasets", headers=bearer(bob)).json()["items"]] == [ids["public"]]
        assert len(c.get("/v1/datasets", headers=bearer(alice)).json()["items"]) == 2
        ancestry = _upload(c, tiny_ancestry_file, bob)["id"]
        # Unknown params are refused after the dataset is checked: the public one passes, the private one is 404.
        for visibility, status, field in (("private", 404, "dataset"), ("public", 422, "params.nope")):
            r = _condense(c, bob, ancestry, "b", mode="train", dataset=f"dataset:{ids[visibility]}",
                          params={"nope": 1})
            assert r.status_code == status and r.json()["error"]["details"][0]["field"] == field, r.text


def test_revoking_a_key_ends_the_event_stream_it_holds_open(tmp_path: Path) -> None:
    """Item 3: a revoked key's stream kept receiving events until its timeout (up to an hour)."""
    settings = make_settings(tmp_path, api_token="boot", republish_after_s=3600)
    server, url = start_server(settings, tmp_path)
    try:
        key = httpx.post(f"{url}/v1/keys", json={"owner": "alice"}, headers=bearer("boot")).json()
        from service.wiring import build_context

        ctx = build_context(settings, with_dispatcher=False)
        try:
            with ctx.sessions.begin() as session:  # a job of alice's that stays queued: its stream stays open
                session.add(Job(id="c" * 32, kind="condense", queue="gpu", owner="alice"))
        finally:
            ctx.close()
        events: list[str] = []
        revoked_at: list[float] = []

        def revoke() -> None:
            time.sleep(1)
            httpx.post(f"{url}/v1/keys/{key['id']}/revoke", headers=bearer("boot")).raise_for_status()
            revoked_at.append(time.monotonic())

        threading.Thread(target=revoke, daemon=True).start()
        # Without the fix the stream stays silent for an hour: the read timeout fails the test.
        with httpx.stream("GET", f"{url}/v1/jobs/{'c' * 32}/events", params={"timeout_s": 3600, "poll_s": 0.2},
                          headers=bearer(key["key"]), timeout=httpx.Timeout(10, read=30)) as r:
            assert r.status_code == 200
            events = list(r.iter_lines())
        ended = time.monotonic()
        assert revoked_at and "event: error" in events, events
        error = json.loads(events[events.index("event: error") + 1].removeprefix("data: "))
        assert error["error"]["code"] == "unauthorized"
        assert ended - revoked_at[0] < 30
        assert httpx.get(f"{url}/v1/jobs/{'c' * 32}", headers=bearer(key["key"])).status_code == 401
    finally:
        server.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0007_gives_learngenes_their_first_publisher_and_keeps_owned_uploads_private(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    import datetime as dt

    from sqlalchemy import MetaData, insert

    from service.db import make_engine
    from service.migrate import upgrade
    from tests.conftest import _reset_pg

    if backend == "postgresql":
        url = request.getfixturevalue("pg_database")
        _reset_pg(url)
    else:
        url = f"sqlite:///{tmp_path / 'registry.db'}"
    engine = make_engine(url)
    upgrade(engine, "0005")
    now = dt.datetime.now(dt.UTC)
    tables = MetaData()
    tables.reflect(engine)
    t = tables.tables
    blob = {"sha256": "ab" * 32, "size_bytes": 1, "storage_key": "none", "created_at": now}
    with engine.begin() as conn:
        conn.execute(insert(t["jobs"]), [
            {"id": f"{i}" * 32, "kind": "condense", "queue": "cpu", "state": "succeeded", "payload": {},
             "progress": {}, "attempts": 1, "max_attempts": 3, "cancel_requested": False, "owner": owner,
             "created_at": now, "published_at": now} for i, owner in ((1, "alice"), (2, "bob"), (3, None))])
        conn.execute(insert(t["learngenes"]), [
            {"id": i, "name": name, "method": "tleg", "family": "vit", "description": "", "created_at": now}
            for i, name in ((1, "alice-tleg"), (2, "seeded"), (3, "old"))])
        conn.execute(insert(t["learngene_versions"]), [
            {"learngene_id": lg, "version": v, "method": "tleg", "job_id": job, "hyperparams": {}, "metrics": {},
             "meta": {}, **blob}
            for lg, v, job in ((1, 1, "1" * 32), (1, 2, "2" * 32), (2, 1, "3" * 32), (3, 1, None))])
        conn.execute(insert(t["ancestries"]), [
            {"name": "a", "architecture": "vit", "model_args": {}, "spec": {}, "param_count": 1, "metrics": {},
             "owner": owner, "family": "vit", "preprocessing": {}, **blob} for owner in ("alice", None)])
        conn.execute(insert(t["datasets"]), [
            {"name": "d", "uri": f"dataset:{i}", "num_classes": 2, "num_images": 2, "owner": owner, **blob}
            for i, owner in ((1, "alice"), (2, None))])
    upgrade(engine)
    with engine.connect() as conn:
        learngenes = conn.exec_driver_sql("SELECT name, owner, visibility FROM learngenes ORDER BY id").all()
        ancestries = conn.exec_driver_sql("SELECT owner, visibility FROM ancestries ORDER BY id").all()
        datasets = conn.exec_driver_sql("SELECT owner, visibility FROM datasets ORDER BY id").all()
    engine.dispose()
    # alice published version 1 (bob's job made version 2: still alice's); the others' first publisher is unknown.
    assert [tuple(r) for r in learngenes] == [("alice-tleg", "alice", "public"), ("seeded", SYSTEM_OWNER, "public"),
                                              ("old", SYSTEM_OWNER, "public")]
    assert [tuple(r) for r in ancestries] == [("alice", "private"), (None, "public")]
    assert [tuple(r) for r in datasets] == [("alice", "private"), (None, "public")]
