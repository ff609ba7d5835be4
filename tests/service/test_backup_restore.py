"""Backup and restore (issue 21, item 6): a registry backed up (rows and blobs, sha256-checked) and restored into
a new data dir (SQLite, local storage) and into a new PostgreSQL database (with S3 storage, moto) serves the same
descendants, byte for byte; from either database."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from service.context import AppContext
from service.registry.backup import BackupError, backup, restore
from service.wiring import build_context
from tests.conftest import PG_ADMIN
from tests.service.conftest import app_client, bearer, new_key
from tests.service.test_ownership import _fitted
from tests.service.test_registry_lifecycle import _descendant, _upload
from tests.service.test_s3_storage import bucket, s3_endpoint  # noqa: F401  (fixtures)
from tests.support import REPO, UNTHROTTLED, make_settings


@pytest.fixture
def new_pg_database() -> Iterator[str]:
    name = f"lg_restore_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{PG_ADMIN.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _populate(ctx: AppContext, tiny_ancestry_file: Path) -> dict[str, Any]:
    with app_client(ctx, api_token="boot", **UNTHROTTLED) as c:
        alice = new_key(c, "boot", owner="alice")
        anc = _upload(c, tiny_ancestry_file, alice, visibility="public")
        _fitted(c, alice, anc["id"], "lg", visibility="public")
        _fitted(c, alice, anc["id"], "lg")
        c.put("/v1/learngenes/lg/aliases/production", json={"version": 1}, headers=bearer(alice))
        kept = [_descendant(c, alice, {"learngene": "lg:1", "spec": {"depth": d}}) for d in (1, 2)]
        deleted = _descendant(c, alice, {"learngene": "lg:2", "spec": {"depth": 3}})
        assert c.delete(f"/v1/descendants/{deleted['id']}", headers=bearer(alice)).status_code == 200
        weights = {d["id"]: c.get(d["weights_url"]).content for d in kept}
        return {"key": alice, "kept": kept, "deleted": deleted, "weights": weights,
                "learngene": c.get("/v1/learngenes/lg").json(),
                "descendants": c.get("/v1/descendants").json()["items"]}


def _check_serves_the_same(ctx: AppContext, before: dict[str, Any]) -> None:
    with app_client(ctx, api_token="boot", **UNTHROTTLED) as c:
        assert c.get("/v1/learngenes/lg").json() == before["learngene"]
        assert c.get("/v1/descendants").json()["items"] == before["descendants"]
        for d in before["kept"]:
            body = c.get(d["weights_url"]).content
            assert body == before["weights"][d["id"]] and hashlib.sha256(body).hexdigest() == d["sha256"]
        assert c.get(f"/v1/descendants/{before['deleted']['id']}").status_code == 410
        # The old key still works, and new rows get new ids (sequences moved past the restored rows).
        again = _descendant(c, before["key"], {"learngene": "lg:production", "spec": {"depth": 4}})
        assert again["id"] > max(d["id"] for d in before["descendants"] + [before["deleted"]])


def test_a_backup_restored_into_a_new_sqlite_dir_and_a_new_postgresql_database_serves_the_same_descendants(
        ctx: AppContext, tiny_ancestry_file: Path, tmp_path: Path, new_pg_database: str, bucket: str,
        s3_endpoint: str) -> None:
    before = _populate(ctx, tiny_ancestry_file)
    folder = tmp_path / "backup"
    summary = backup(ctx, folder)
    # The ancestry, the versions' tensors (the same fit twice: one blob), the two stored descendants.
    assert summary.tables["descendants"] == 3 and summary.blobs == 4
    for target in (make_settings(tmp_path / "new-sqlite", api_token="boot"),
                   make_settings(tmp_path / "new-pg", database_url=new_pg_database, api_token="boot",
                                 storage_url=f"s3://{bucket}/restored", s3_endpoint_url=s3_endpoint)):
        restored = build_context(target)
        try:
            restore(restored, folder)
            _check_serves_the_same(restored, before)
        finally:
            restored.close()


@pytest.mark.parametrize("backend_settings", ["sqlite"], indirect=True)
def test_restore_checks_every_sha256_first_and_refuses_a_registry_that_is_not_empty(
        ctx: AppContext, tiny_ancestry_file: Path, tmp_path: Path) -> None:
    _populate(ctx, tiny_ancestry_file)
    folder = tmp_path / "backup"
    backup(ctx, folder)
    with pytest.raises(BackupError, match="not empty"):
        backup(ctx, folder)
    with pytest.raises(BackupError, match="not empty"):
        restore(ctx, folder)

    blob = next((folder / "blobs" / "sha256").glob("*/*"))
    good = blob.read_bytes()
    blob.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    target = build_context(make_settings(tmp_path / "new"))
    try:
        with pytest.raises(BackupError, match=f"blob sha256/{blob.parent.name}/{blob.name} .* does not match"):
            restore(target, folder)
        assert not any(target.store.blobs())  # nothing was written
    finally:
        target.close()
    blob.write_bytes(good)

    # The commands: learngene backup DIR / learngene restore DIR, with the usual settings.
    env = {**os.environ, "PYTHONPATH": str(REPO), "LEARNGENE_DATA_DIR": str(ctx.settings.data_dir)}
    r = subprocess.run([sys.executable, "-m", "learngene", "backup", str(tmp_path / "cli-backup")], env=env,
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0 and "backed up" in r.stdout, r.stderr
    env["LEARNGENE_DATA_DIR"] = str(tmp_path / "cli-restored")
    r = subprocess.run([sys.executable, "-m", "learngene", "restore", str(tmp_path / "cli-backup")], env=env,
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0 and "restored" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "learngene", "restore", str(tmp_path / "cli-backup")], env=env,
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 1 and "not empty" in r.stderr
