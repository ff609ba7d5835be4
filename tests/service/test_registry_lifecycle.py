"""Registry lifecycle (issue 21, items 1 and 2): deleting each kind of object with its lineage rules, and aliases.

alice and bob hold write keys, "boot" is the bootstrap admin; everything runs on the real app, database and
in-process workers, on SQLite and PostgreSQL.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from service.context import AppContext
from service.db import unit_of_work
from service.learngenes.service import publish_version
from service.models import Ancestry
from tests.service.conftest import app_client, bearer, new_key
from tests.service.test_datasets_api import _digit_images, _zip
from tests.service.test_s3_storage import bucket, s3_endpoint  # noqa: F401  (fixtures)
from tests.service.test_ownership import _fitted, _upload
from tests.support import UNTHROTTLED

ADMIN = bearer("boot")


def _descendant(c: TestClient, key: str, body: dict[str, Any]) -> dict[str, Any]:
    r = c.post("/v1/descendants", params={"wait": 60}, json=body, headers=bearer(key))
    assert r.status_code in (200, 201), r.text
    return r.json()  # type: ignore[no-any-return]


def _blob_exists(ctx: AppContext, sha256: str) -> bool:
    return ctx.store.exists(f"sha256/{sha256[:2]}/{sha256}")


@pytest.fixture
def c(ctx: AppContext) -> Any:
    with app_client(ctx, api_token="boot", **UNTHROTTLED) as client:
        yield client


def test_each_kind_is_deleted_by_its_owner_or_an_admin_and_leaves_a_tombstone(
        c: TestClient, ctx: AppContext, tiny_ancestry_file: Path) -> None:
    alice, bob = new_key(c, "boot", owner="alice"), new_key(c, "boot", owner="bob")
    anc = _upload(c, tiny_ancestry_file, alice, visibility="public")
    _fitted(c, alice, anc["id"], "alice-tleg", visibility="public")
    _fitted(c, alice, anc["id"], "alice-tleg")
    desc = _descendant(c, bob, {"learngene": "alice-tleg:1", "spec": {"depth": 3}})
    mine = _descendant(c, alice, {"learngene": "alice-tleg:1", "spec": {"depth": 2}})
    assert desc["owner"] == "bob" and _blob_exists(ctx, desc["sha256"])

    # A descendant: whoever asked for it first, the source's owner, an admin. Others who see it: 403.
    carol = new_key(c, "boot", owner="carol")
    assert c.delete(f"/v1/descendants/{desc['id']}", headers=bearer(carol)).status_code == 403
    assert c.delete(f"/v1/descendants/{desc['id']}").status_code == 401
    r = c.delete(f"/v1/descendants/{desc['id']}", headers=bearer(bob))
    assert r.status_code == 200 and r.json() == {"deleted": [f"descendant:{desc['id']}"]}
    gone = c.get(f"/v1/descendants/{desc['id']}")
    assert gone.status_code == 410 and "deleted by bob" in gone.json()["error"]["message"]
    assert desc["sha256"] in gone.json()["error"]["message"]
    assert not _blob_exists(ctx, desc["sha256"])
    assert desc["id"] not in [d["id"] for d in c.get("/v1/descendants").json()["items"]]
    assert c.delete(f"/v1/descendants/{mine['id']}", headers=bearer(alice)).status_code == 200  # source's owner
    # The same request again makes it anew, in the same row (identical bytes: descendants are deterministic).
    again = _descendant(c, bob, {"learngene": "alice-tleg:1", "spec": {"depth": 3}})
    assert again["id"] == desc["id"] and again["sha256"] == desc["sha256"] and again["status"] == "ready"

    # A version: the learngene's owner or an admin; its descendants go with it, latest moves back.
    assert c.delete("/v1/learngenes/alice-tleg/versions/2", headers=bearer(bob)).status_code == 403
    v2 = c.get("/v1/learngenes/alice-tleg/versions/2").json()
    r = c.delete("/v1/learngenes/alice-tleg/versions/2", headers=bearer(alice))
    assert r.status_code == 200 and r.json() == {"deleted": ["learngene:alice-tleg:2"]}
    assert c.get("/v1/learngenes/alice-tleg/versions/2").status_code == 410
    lg = c.get("/v1/learngenes/alice-tleg").json()
    assert lg["latest_version"] == 1 and lg["version_count"] == 1
    v1 = c.get("/v1/learngenes/alice-tleg/versions/1").json()
    if v1["sha256"] != v2["sha256"]:
        assert not _blob_exists(ctx, v2["sha256"])
    assert _blob_exists(ctx, v1["sha256"])  # a blob another live row names stays

    # A whole learngene, by an admin: versions and descendants go; the name stays its owner's.
    r = c.delete("/v1/learngenes/alice-tleg", headers=ADMIN)
    assert r.status_code == 200
    assert set(r.json()["deleted"]) == {f"descendant:{desc['id']}", "learngene:alice-tleg:1", "learngene:alice-tleg"}
    assert c.get("/v1/learngenes/alice-tleg").status_code == 410
    assert "alice-tleg" not in [x["name"] for x in c.get("/v1/learngenes").json()["items"]]
    assert c.post("/v1/descendants", json={"learngene": "alice-tleg", "spec": {"depth": 2}},
                  headers=bearer(bob)).status_code == 404
    _fitted(c, alice, anc["id"], "alice-tleg")  # its owner publishes into it again: numbers go on
    assert c.get("/v1/learngenes/alice-tleg").json()["latest_version"] == 3

    # A private ancestry is 404 to others; its owner deletes it once nothing depends on it.
    secret = _upload(c, tiny_ancestry_file, alice, name="secret")
    assert c.delete(f"/v1/ancestries/{secret['id']}", headers=bearer(bob)).status_code == 404
    assert c.delete(f"/v1/ancestries/{secret['id']}", headers=bearer(alice)).status_code == 200
    assert c.get(f"/v1/ancestries/{secret['id']}", headers=bearer(alice)).status_code == 410
    assert c.get(f"/v1/ancestries/{secret['id']}", headers=bearer(bob)).status_code == 404
    assert _blob_exists(ctx, anc["sha256"])  # the same file is still the public ancestry's

    # A dataset.
    r = c.post("/v1/datasets", files={"file": ("d.zip", _zip(_digit_images()))}, headers=bearer(bob))
    assert r.status_code == 201, r.text
    ds = r.json()
    assert c.delete(f"/v1/datasets/{ds['id']}", headers=bearer(alice)).status_code == 404
    assert c.delete(f"/v1/datasets/{ds['id']}", headers=bearer(bob)).status_code == 200
    assert c.get(f"/v1/datasets/{ds['id']}", headers=bearer(bob)).status_code == 410
    assert not _blob_exists(ctx, ds["sha256"])
    assert not ctx.store.local_dir(f"datasets/{ds['sha256']}").exists()


def test_dependants_are_refused_with_409_naming_them_unless_an_admin_cascades(
        c: TestClient, ctx: AppContext, tiny_ancestry_file: Path) -> None:
    alice, bob = new_key(c, "boot", owner="alice"), new_key(c, "boot", owner="bob")
    anc = _upload(c, tiny_ancestry_file, alice, visibility="public")
    _fitted(c, alice, anc["id"], "alice-tleg", visibility="public")
    _fitted(c, bob, anc["id"], "bob-secret")
    direct = _descendant(c, alice, {"ancestry": anc["id"], "method": "weight-selection",
                                    "spec": {"depth": 2, "embed_dim": 16, "num_heads": 2}})

    r = c.delete(f"/v1/ancestries/{anc['id']}", headers=bearer(alice))
    assert r.status_code == 409, r.text
    message = r.json()["error"]["message"]
    assert "alice-tleg:1" in message and "bob-secret" not in message and "1 version(s) of other owners" in message
    r = c.delete(f"/v1/ancestries/{anc['id']}", params={"cascade": "true"}, headers=bearer(alice))
    assert r.status_code == 403 and r.json()["error"]["details"][0]["field"] == "cascade"
    r = c.delete(f"/v1/ancestries/{anc['id']}", params={"cascade": "true"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["deleted"] == [f"descendant:{direct['id']}", f"ancestry:{anc['id']}"]
    assert not _blob_exists(ctx, anc["sha256"])
    # The versions stay, and so does their lineage: it names the ancestry, deleted by the admin.
    lineage = c.get("/v1/learngenes/alice-tleg/versions/1").json()["lineage"]
    assert lineage["ancestry_id"] == anc["id"] and lineage["ancestry_deleted"]["deleted_by"] == "admin"
    assert lineage["ancestry_deleted"]["sha256"] == anc["sha256"]
    assert _descendant(c, alice, {"learngene": "alice-tleg", "spec": {"depth": 2}})["status"] == "ready"

    # A dataset in a version's lineage.
    r = c.post("/v1/datasets", files={"file": ("d.zip", _zip(_digit_images()))}, headers=bearer(alice),
               data={"visibility": "public"})
    ds = r.json()
    with unit_of_work(ctx.sessions) as uow:  # as a training job on it publishes
        publish_version(uow.session, name="alice-tleg", method="tleg", description="", ancestry_id=None,
                        job_id=None, dataset=ds["uri"], mode="train", hyperparams={}, metrics={}, meta={},
                        sha256="ab" * 32, size_bytes=1, storage_key="none", owner="alice")
    r = c.delete(f"/v1/datasets/{ds['id']}", headers=bearer(alice))
    assert r.status_code == 409 and "alice-tleg:2" in r.json()["error"]["message"]
    assert c.delete(f"/v1/datasets/{ds['id']}", params={"cascade": "true"}, headers=ADMIN).status_code == 200
    lineage = c.get("/v1/learngenes/alice-tleg/versions/2").json()["lineage"]
    assert lineage["dataset"] == ds["uri"] and lineage["dataset_deleted"]["sha256"] == ds["sha256"]


def test_a_running_jobs_inputs_cannot_be_deleted_under_it(c: TestClient, ctx: AppContext,
                                                          tiny_ancestry_file: Path) -> None:
    alice = new_key(c, "boot", owner="alice")
    anc = _upload(c, tiny_ancestry_file, alice)
    _fitted(c, alice, anc["id"], "alice-tleg")
    dispatcher, ctx.dispatcher = ctx.dispatcher, None  # jobs stay queued: no worker takes them
    try:
        r = c.post("/v1/condense-jobs", headers=bearer(alice), json={
            "ancestry": anc["id"], "method": "tleg", "learngene": "alice-tleg", "mode": "fit", "evaluate": False})
        job = r.json()["id"]
        expanding = c.post("/v1/descendants", params={"wait": 0}, headers=bearer(alice),
                           json={"learngene": "alice-tleg:1", "spec": {"depth": 2}}).json()
        for path in (f"/v1/ancestries/{anc['id']}", "/v1/learngenes/alice-tleg",
                     f"/v1/descendants/{expanding['id']}", "/v1/learngenes/alice-tleg/versions/1"):
            r = c.delete(path, params={"cascade": "true"} if "ancestries" in path else None, headers=ADMIN)
            assert r.status_code == 409, (path, r.text)
            assert "queued or running job" in r.json()["error"]["message"]
        assert job in c.delete(f"/v1/ancestries/{anc['id']}", params={"cascade": "true"},
                               headers=ADMIN).json()["error"]["message"]
        # Jobs are private: alice's are named to her and admins, only counted for others.
        bob = new_key(c, "boot", owner="bob")
        r = c.delete(f"/v1/ancestries/{anc['id']}", headers=bearer(alice))
        assert r.status_code == 409 and job in r.json()["error"]["message"]
        with ctx.sessions.begin() as session:  # as if the ancestry alice's queued job reads were bob's
            session.execute(update(Ancestry).where(Ancestry.id == anc["id"]).values(owner="bob"))
        r = c.delete(f"/v1/ancestries/{anc['id']}", params={"cascade": "true"}, headers=ADMIN)
        assert job in r.json()["error"]["message"]
        r = c.delete(f"/v1/ancestries/{anc['id']}", headers=bearer(bob))
        assert r.status_code == 409 and job not in r.json()["error"]["message"]
        assert "1 of other owners" in r.json()["error"]["message"]
    finally:
        ctx.dispatcher = dispatcher
    for j in (job, expanding["job_id"]):
        assert c.post(f"/v1/jobs/{j}/cancel", headers=ADMIN).status_code in (200, 202)
    assert c.delete(f"/v1/ancestries/{anc['id']}", params={"cascade": "true"}, headers=ADMIN).status_code == 200


def test_a_blob_two_rows_share_leaves_storage_with_the_last_of_them(c: TestClient, ctx: AppContext,
                                                                    tiny_ancestry_file: Path) -> None:
    alice, bob = new_key(c, "boot", owner="alice"), new_key(c, "boot", owner="bob")
    a, b = _upload(c, tiny_ancestry_file, alice), _upload(c, tiny_ancestry_file, bob)
    assert a["id"] != b["id"] and a["sha256"] == b["sha256"]
    assert c.delete(f"/v1/ancestries/{a['id']}", headers=bearer(alice)).status_code == 200
    assert _blob_exists(ctx, a["sha256"])
    assert c.delete(f"/v1/ancestries/{b['id']}", headers=bearer(bob)).status_code == 200
    assert not _blob_exists(ctx, a["sha256"])
    # Uploaded again after deletion: a new ancestry (a new id), stored again.
    again = _upload(c, tiny_ancestry_file, alice)
    assert again["id"] not in (a["id"], b["id"]) and _blob_exists(ctx, again["sha256"])


def test_aliases_are_set_listed_and_removed_by_the_owner_and_latest_is_the_services(
        c: TestClient, ctx: AppContext, tiny_ancestry_file: Path) -> None:
    alice, bob = new_key(c, "boot", owner="alice"), new_key(c, "boot", owner="bob")
    anc = _upload(c, tiny_ancestry_file, alice)
    for _ in range(3):
        _fitted(c, alice, anc["id"], "lg", visibility="public")
    r = c.put("/v1/learngenes/lg/aliases/production", json={"version": 1}, headers=bearer(alice))
    assert r.status_code == 200 and r.json() == {"latest": 3, "production": 1}
    assert c.get("/v1/learngenes/lg/aliases").json() == {"latest": 3, "production": 1}
    assert c.get("/v1/learngenes/lg").json()["aliases"] == {"latest": 3, "production": 1}
    assert c.get("/v1/learngenes/lg/versions/production").json()["version"] == 1
    assert _descendant(c, bob, {"learngene": "lg:production", "spec": {"depth": 2}})["source"]["version"] == 1
    assert c.put("/v1/learngenes/lg/aliases/production", json={"version": 2},
                 headers=bearer(bob)).status_code == 403
    r = c.put("/v1/learngenes/lg/aliases/latest", json={"version": 1}, headers=bearer(alice))
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "alias"
    assert c.put("/v1/learngenes/lg/aliases/Bad Alias", json={"version": 1}, headers=bearer(alice)).status_code == 422
    r = c.put("/v1/learngenes/lg/aliases/staging", json={"version": 9}, headers=bearer(alice))
    assert r.status_code == 404 and r.json()["error"]["details"][0]["field"] == "version"
    assert c.put("/v1/learngenes/lg/aliases/staging", json={"version": "2"}, headers=bearer(alice)).status_code == 422
    assert c.delete("/v1/learngenes/lg/aliases/latest", headers=bearer(alice)).status_code == 409
    assert c.put("/v1/learngenes/lg/aliases/staging", json={"version": 2}, headers=bearer(alice)).status_code == 200
    r = c.delete("/v1/learngenes/lg/aliases/production", headers=bearer(alice))
    assert r.status_code == 200 and r.json() == {"latest": 3, "staging": 2}
    assert c.delete("/v1/learngenes/lg/aliases/production", headers=bearer(alice)).status_code == 404
    # Deleting a version takes its aliases with it; deleting the newest moves latest.
    assert c.delete("/v1/learngenes/lg/versions/2", headers=bearer(alice)).status_code == 200
    assert c.delete("/v1/learngenes/lg/versions/latest", headers=bearer(alice)).status_code == 200
    assert c.get("/v1/learngenes/lg/aliases").json() == {"latest": 1}
    _fitted(c, alice, anc["id"], "lg")  # publishing still moves latest, to a number never used before
    assert c.get("/v1/learngenes/lg/aliases").json() == {"latest": 4}


@pytest.mark.parametrize("backend_settings", ["sqlite"], indirect=True)
def test_deleting_removes_blobs_from_s3_and_this_machines_cache(backend_settings: Any, tiny_ancestry_file: Path,
                                                                 bucket: str, s3_endpoint: str) -> None:
    import boto3

    from service.wiring import build_context

    backend_settings.storage_url = f"s3://{bucket}/registry"
    backend_settings.s3_endpoint_url = s3_endpoint
    ctx = build_context(backend_settings)
    try:
        with app_client(ctx, api_token="boot", **UNTHROTTLED) as c:
            alice, bob = new_key(c, "boot", owner="alice"), new_key(c, "boot", owner="bob")
            a, b = _upload(c, tiny_ancestry_file, alice), _upload(c, tiny_ancestry_file, bob)
            key = f"registry/sha256/{a['sha256'][:2]}/{a['sha256']}"

            def in_bucket() -> bool:
                listing = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=bucket)
                return key in [o["Key"] for o in listing.get("Contents", [])]

            assert in_bucket()
            assert c.delete(f"/v1/ancestries/{a['id']}", headers=bearer(alice)).status_code == 200
            assert in_bucket()  # bob's ancestry still names it
            assert c.delete(f"/v1/ancestries/{b['id']}", headers=bearer(bob)).status_code == 200
            assert not in_bucket()
            assert not (ctx.settings.resolved_cache_dir / key.removeprefix("registry/")).exists()
    finally:
        ctx.close()
