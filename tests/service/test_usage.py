"""GET /v1/usage (issue 21, item 4): what each owner stores, runs and has left of today's quotas, equal to what
was stored."""
from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from service.context import AppContext
from tests.service.conftest import bearer, new_key, wait_job
from tests.service.test_datasets_api import _digit_images, _zip
from tests.service.test_ownership import _fitted
from tests.service.test_registry_lifecycle import _descendant, _upload, c  # noqa: F401  (fixture c)


def test_usage_equals_what_each_owner_stored(c: TestClient, ctx: AppContext, tiny_ancestry_file: Path) -> None:
    alice, bob = new_key(c, "boot", owner="alice"), new_key(c, "boot", owner="bob", upload_bytes_per_day=10**9)
    anc = _upload(c, tiny_ancestry_file, alice, visibility="public")
    _fitted(c, alice, anc["id"], "alice-tleg", visibility="public")
    _fitted(c, alice, anc["id"], "alice-tleg")
    versions = c.get("/v1/learngenes/alice-tleg/versions", headers=bearer(alice)).json()["items"]
    desc = _descendant(c, bob, {"learngene": "alice-tleg", "spec": {"depth": 2}})
    archive = _zip(_digit_images())
    ds = c.post("/v1/datasets", files={"file": ("d.zip", archive)}, headers=bearer(bob)).json()

    r = c.get("/v1/usage", headers=bearer(alice))
    assert r.status_code == 200, r.text
    (mine,) = r.json()["owners"]
    assert mine["owner"] == "alice"
    assert mine["stored"] == {
        "ancestries": {"count": 1, "bytes": anc["size_bytes"]},
        "datasets": {"count": 0, "bytes": 0},
        "learngene_versions": {"count": 2, "bytes": sum(v["size_bytes"] for v in versions)},
        "descendants": {"count": 0, "bytes": 0},
    }
    assert mine["stored_bytes"] == anc["size_bytes"] + sum(v["size_bytes"] for v in versions)
    assert mine["jobs"]["succeeded"] == 2 and mine["descendants_produced"] == 0
    (quota,) = mine["quotas"]
    # Uploads are charged as their bodies arrive: the file and the multipart framing around it.
    assert 0 < quota["upload_bytes_used_today"] - tiny_ancestry_file.stat().st_size < 4096
    assert quota["upload_bytes_left_today"] == quota["upload_bytes_limit"] - quota["upload_bytes_used_today"]

    (theirs,) = c.get("/v1/usage", headers=bearer(bob)).json()["owners"]
    assert theirs["stored"]["descendants"] == {"count": 1, "bytes": desc["size_bytes"]}
    assert theirs["stored"]["datasets"] == {"count": 1, "bytes": len(archive)} and ds["size_bytes"] == len(archive)
    assert theirs["descendants_produced"] == 1 and theirs["jobs"]["succeeded"] == 1
    (quota,) = theirs["quotas"]
    assert quota["descendant_bytes_used_today"] == desc["param_count"] * 4
    assert quota["upload_bytes_limit"] == 10**9 and 0 < quota["upload_bytes_used_today"] - len(archive) < 4096

    # Others' usage is for admins: every owner, or one.
    assert c.get("/v1/usage", params={"owner": "alice"}, headers=bearer(bob)).status_code == 403
    everyone = c.get("/v1/usage", headers=bearer("boot")).json()
    assert {o["owner"] for o in everyone["owners"]} >= {"alice", "bob"}
    assert everyone["descendant_cache_used_bytes"] == desc["size_bytes"]
    only = c.get("/v1/usage", params={"owner": "bob"}, headers=bearer("boot")).json()["owners"]
    assert only == [theirs]

    # Deleting and evicting show at once.
    assert c.delete(f"/v1/descendants/{desc['id']}", headers=bearer(bob)).status_code == 200
    (theirs,) = c.get("/v1/usage", headers=bearer(bob)).json()["owners"]
    assert theirs["stored"]["descendants"] == {"count": 0, "bytes": 0} and theirs["descendants_produced"] == 0
