"""Garbage collection (issue 21, item 5): a blob left by a crash between writing it and committing its row is
found and removed once past the grace period, and nothing else is; on local and S3 storage."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.context import AppContext
from service.db import unit_of_work
from service.registry import gc
from service.settings import Settings
from tests.service.conftest import app_client, context_on_storage, bearer, condense_fit, upload_ancestry
from tests.service.test_s3_storage import bucket, s3_endpoint  # noqa: F401  (fixtures)
from tests.support import REPO, UNTHROTTLED


@pytest.fixture(params=["local", "s3"])
def store_ctx(request: pytest.FixtureRequest, backend_settings: Settings) -> Iterator[AppContext]:
    context = context_on_storage(request, backend_settings)
    yield context
    context.close()


def _crash_after_writing(ctx: AppContext, data: bytes) -> str:
    """An upload that stored its blob and then died before its row committed (the transaction rolls back)."""
    with pytest.raises(RuntimeError), unit_of_work(ctx.sessions):
        stored = ctx.store.put_bytes(data)
        raise RuntimeError("the process died here")
    return stored.key


def test_an_orphan_left_by_a_crash_is_removed_after_the_grace_period_and_nothing_else(
        store_ctx: AppContext, tiny_ancestry_file: Path) -> None:
    ctx = store_ctx
    with app_client(ctx, **UNTHROTTLED) as c:
        anc = upload_ancestry(c, tiny_ancestry_file).json()
        condense_fit(c, anc["id"], "tleg", "lg")
        desc = c.post("/v1/descendants", params={"wait": 60}, json={"learngene": "lg", "spec": {"depth": 2}}).json()
        version = c.get("/v1/learngenes/lg/versions/1").json()
    live = {b.key for b in ctx.store.blobs()}
    orphan = _crash_after_writing(ctx, os.urandom(4096))
    assert orphan not in live and ctx.store.exists(orphan)

    # Within the grace period it is left alone (its row may be about to commit).
    found = gc.collect(ctx, grace_s=3600)
    assert found.orphans == [] and found.young == 1 and ctx.store.exists(orphan)
    # A dry run lists it and removes nothing.
    found = gc.collect(ctx, dry_run=True, grace_s=0)
    assert [b.key for b in found.orphans] == [orphan] and found.orphans[0].size == 4096 and found.removed == []
    assert ctx.store.exists(orphan)
    found = gc.collect(ctx, grace_s=0)
    assert found.removed == [orphan] and not ctx.store.exists(orphan)
    # Everything a row names is still there and still served.
    assert {b.key for b in ctx.store.blobs()} == live
    for sha in (anc["sha256"], version["sha256"], desc["sha256"]):
        assert ctx.store.exists(f"sha256/{sha[:2]}/{sha}")
    with app_client(ctx, **UNTHROTTLED) as c:
        assert c.get(desc["weights_url"]).status_code == 200


@pytest.mark.parametrize("backend_settings", ["sqlite"], indirect=True)
def test_the_sweeper_collects_and_the_command_and_admin_route_list(ctx: AppContext, tmp_path: Path) -> None:
    orphan = _crash_after_writing(ctx, b"left behind")
    ctx.settings.gc_grace_s = 0
    ctx.settings.gc_every_s = 3600
    assert [b.key for b in gc.sweep(ctx).orphans] == [orphan]  # type: ignore[union-attr]
    assert not ctx.store.exists(orphan)
    assert gc.sweep(ctx) is None  # not again before gc_every_s has passed

    orphan = _crash_after_writing(ctx, b"left behind again")
    with app_client(ctx, api_token="boot") as c:
        assert c.get("/v1/gc").status_code == 401
        r = c.get("/v1/gc", headers=bearer("boot"))
        assert r.status_code == 200 and [o["key"] for o in r.json()["orphans"]] == [orphan]
        assert ctx.store.exists(orphan)
        from tests.service.conftest import new_key

        user = new_key(c, "boot", owner="alice")
        assert c.post("/v1/gc", headers=bearer(user)).status_code == 403

    env = {**os.environ, "LEARNGENE_DATA_DIR": str(ctx.settings.data_dir), "LEARNGENE_GC_GRACE_S": "0",
           "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "learngene", "gc", "--dry-run"], env=env, capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\t")[0] == orphan and "would remove 1 orphan blob" in r.stderr
    assert ctx.store.exists(orphan)
    r = subprocess.run([sys.executable, "-m", "learngene", "gc"], env=env, capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert r.returncode == 0 and "removed 1 orphan blob" in r.stderr, r.stderr
    assert not ctx.store.exists(orphan)
