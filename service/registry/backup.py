"""Backup and restore of a whole registry: its database (SQLite or PostgreSQL, through SQLAlchemy, so a backup of
one restores into the other) and the blobs of its artifact store (local or S3), each checked by sha256.

A backup folder holds::

    manifest.json           format, service schema revision, time, and the sha256 of every file below
    tables/<table>.jsonl    one JSON object per row, every table of the registry
    blobs/sha256/ab/<sha>   every blob a live row names (descendant weights only while stored)

The rows are read in one transaction (repeatable read on PostgreSQL), so they are consistent with each other;
blobs are content-addressed and never change, so copying them afterwards is safe (one deleted meanwhile is
refused: take the backup again). Jobs' checkpoints are not kept: a job still running at backup time runs again
from its start after a restore (the reaper requeues it).

``restore`` checks everything first (each file's sha256 against the manifest, each blob's against its name),
then refuses a registry that already holds anything, migrates an empty one to the backup's revision, inserts the
rows table by table, moves PostgreSQL's id sequences past them and stores the blobs.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Table, func, select, text
from sqlalchemy.orm import Session

from service.context import AppContext
from service.migrate import current_revision, upgrade
from service.models import Ancestry, Base, DatasetRow, DescendantRow, LearngeneVersion, UTCDateTime
from service.storage import CHUNK, sha256_file

FORMAT = 1
MANIFEST = "manifest.json"


class BackupError(Exception):
    """A backup that cannot be made or restored; the message says why."""


@dataclass
class Summary:
    tables: dict[str, int]
    blobs: int
    blob_bytes: int


def _tables() -> list[Table]:
    return list(Base.metadata.sorted_tables)  # parents before children: the order rows can be inserted in


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat() if value.tzinfo else value.isoformat()
    return value


def _blob_owners(session: Session) -> dict[str, str]:
    """Every blob a live row needs, with one row naming it (for error messages)."""
    queries = [
        (select(Ancestry.storage_key, Ancestry.id).where(Ancestry.deleted_at.is_(None)), "ancestry"),
        (select(DatasetRow.storage_key, DatasetRow.id).where(DatasetRow.deleted_at.is_(None)), "dataset"),
        (select(LearngeneVersion.storage_key, LearngeneVersion.id).where(LearngeneVersion.deleted_at.is_(None)),
         "learngene version row"),
        (select(DescendantRow.storage_key, DescendantRow.id).where(DescendantRow.deleted_at.is_(None),
                                                                    DescendantRow.status == "ready"), "descendant"),
    ]
    out: dict[str, str] = {}
    for q, kind in queries:
        for key, row_id in session.execute(q):
            if key and key.startswith("sha256/"):
                out.setdefault(key, f"{kind} {row_id}")
    return out


def _copy_hashing(src: Any, dest: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    tmp = dest.with_name(dest.name + ".incomplete")
    with open(tmp, "wb") as out:
        while chunk := src.read(CHUNK):
            h.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, dest)
    return h.hexdigest(), size


def backup(ctx: AppContext, folder: Path) -> Summary:
    """Write the registry into ``folder`` (new, or empty)."""
    if folder.exists() and any(folder.iterdir()):
        raise BackupError(f"{folder} is not empty: back up into a new folder")
    (folder / "tables").mkdir(parents=True, exist_ok=True)
    revision = current_revision(ctx.engine)
    files: dict[str, str] = {}
    counts: dict[str, int] = {}
    with ctx.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin(), Session(bind=conn) as session:
            for table in _tables():
                path = folder / "tables" / f"{table.name}.jsonl"
                n = 0
                with open(path, "w") as out:
                    pk = list(table.primary_key.columns)
                    for row in conn.execute(select(table).order_by(*pk)).mappings():
                        out.write(json.dumps({k: _plain(v) for k, v in row.items()}, sort_keys=True) + "\n")
                        n += 1
                counts[table.name] = n
                files[f"tables/{table.name}.jsonl"] = sha256_file(path)
            needed = _blob_owners(session)
    blobs: dict[str, dict[str, Any]] = {}
    for key, owner in sorted(needed.items()):
        dest = folder / "blobs" / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with ctx.store.open(key) as src:
                digest, size = _copy_hashing(src, dest)
        except FileNotFoundError as exc:
            raise BackupError(f"blob {key} of {owner} is missing from storage") from exc
        if digest != key.rsplit("/", 1)[-1]:
            raise BackupError(f"blob {key} of {owner} does not match its sha256 in storage (it reads as {digest})")
        blobs[key] = {"sha256": digest, "size": size}
    manifest = {"format": FORMAT, "revision": revision, "created_at": dt.datetime.now(dt.UTC).isoformat(),
                "database": ctx.engine.dialect.name, "tables": counts, "files": files, "blobs": blobs}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return Summary(counts, len(blobs), sum(b["size"] for b in blobs.values()))


def verify(folder: Path) -> dict[str, Any]:
    """The manifest, once every file and blob of the backup matches its sha256."""
    try:
        manifest: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{folder} holds no readable {MANIFEST}: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise BackupError(f"backup format {manifest.get('format')!r} is not {FORMAT}")
    for name, digest in manifest["files"].items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != digest:
            raise BackupError(f"{name} of the backup is missing or does not match its sha256: not restoring")
    for key, meta in manifest["blobs"].items():
        path = folder / "blobs" / key
        if not path.is_file() or sha256_file(path) != meta["sha256"] or meta["sha256"] != key.rsplit("/", 1)[-1]:
            raise BackupError(f"blob {key} of the backup is missing or does not match its sha256: not restoring")
    return manifest


def _rows(folder: Path, table: Table) -> Iterator[dict[str, Any]]:
    dates = [c.name for c in table.columns if isinstance(c.type, UTCDateTime)]
    with open(folder / "tables" / f"{table.name}.jsonl") as f:
        for line in f:
            row = json.loads(line)
            for name in dates:
                if row.get(name) is not None:
                    row[name] = dt.datetime.fromisoformat(row[name])
            yield row


def restore(ctx: AppContext, folder: Path, batch: int = 500) -> Summary:
    """Bring the backup in ``folder`` into this (empty) registry and store."""
    manifest = verify(folder)
    upgrade(ctx.engine, manifest["revision"] or "head")
    if current_revision(ctx.engine) != manifest["revision"]:
        raise BackupError(f"this registry is at schema revision {current_revision(ctx.engine)}, the backup at "
                          f"{manifest['revision']}: restore with the service version that made it, then upgrade")
    tables = _tables()
    with ctx.engine.begin() as conn:
        for table in tables:
            if conn.execute(select(func.count()).select_from(table)).scalar():
                raise BackupError(f"this registry is not empty (table {table.name} has rows): restore into a new "
                                  "database and storage")
        for table in tables:
            chunk: list[dict[str, Any]] = []
            for row in _rows(folder, table):
                chunk.append(row)
                if len(chunk) >= batch:
                    conn.execute(table.insert(), chunk)
                    chunk = []
            if chunk:
                conn.execute(table.insert(), chunk)
        if conn.dialect.name == "postgresql":  # ids keep counting from past the restored rows
            for table in tables:
                column = table.c.get("id")
                if column is not None and column.autoincrement is not False and column.type.python_type is int:
                    conn.execute(text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"COALESCE((SELECT MAX(id) FROM {table.name}), 0) + 1, false)"))
    size = 0
    for key, meta in manifest["blobs"].items():
        path = folder / "blobs" / key
        scratch = ctx.store.scratch_dir() / f"restore-{meta['sha256']}"
        shutil.copyfile(path, scratch)
        stored = ctx.store.put_file(scratch, move=True, sha256=meta["sha256"])
        if stored.key != key:
            raise BackupError(f"blob {key} was stored as {stored.key}")
        size += meta["size"]
    return Summary(dict(manifest["tables"]), len(manifest["blobs"]), size)
