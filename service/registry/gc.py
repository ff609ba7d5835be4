"""Garbage collection: blobs in storage that no row names.

A blob is written before the row that names it commits (an upload, a job's output), so a crash in between
leaves an orphan. Deleting removes its blobs after the commit, best effort, so a failure there leaves one too.
Garbage collection lists the content-addressed blobs of the store, keeps those a row names (deleted rows' blobs
are not kept: tombstones need no bytes) and removes the rest once they are older than ``LEARNGENE_GC_GRACE_S``
(a younger one may belong to a row about to commit: storing an existing blob again renews its time on local
storage). Scratch files (half-written uploads and outputs) older than the grace period go too.

The sweeper (the job maintenance loop's housekeeping) runs it every ``LEARNGENE_GC_EVERY_S``; ``learngene gc``
runs it now (``--dry-run``: only list), and so does ``POST /v1/gc`` for admins.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from service.blobs import referenced_keys, remove_unreferenced
from service.context import AppContext
from service.storage import BlobInfo

log = logging.getLogger(__name__)


@dataclass
class Collection:
    """What one pass found (and, unless a dry run, removed)."""

    orphans: list[BlobInfo] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    scratch: list[str] = field(default_factory=list)
    young: int = 0  # orphans still within the grace period, left for a later pass

    @property
    def orphan_bytes(self) -> int:
        return sum(b.size for b in self.orphans)


def find_orphans(ctx: AppContext, grace_s: float | None = None, now: float | None = None) -> Collection:
    grace = ctx.settings.gc_grace_s if grace_s is None else grace_s
    now = time.time() if now is None else now
    with ctx.sessions() as session:
        live = referenced_keys(session)
    found = Collection()
    for blob in ctx.store.blobs():  # listed after the rows were read: a blob written since is young anyway
        if blob.key in live:
            continue
        if now - blob.modified < grace:
            found.young += 1
        else:
            found.orphans.append(blob)
    scratch = ctx.store.scratch_dir()
    for path in sorted(scratch.iterdir()) if scratch.is_dir() else []:
        try:
            if path.is_file() and now - path.stat().st_mtime >= grace:
                found.scratch.append(path.name)
        except FileNotFoundError:
            continue
    return found


def collect(ctx: AppContext, *, dry_run: bool = False, grace_s: float | None = None) -> Collection:
    found = find_orphans(ctx, grace_s)
    if dry_run:
        return found
    # Checked against the rows once more, just before each removal (remove_unreferenced).
    found.removed = remove_unreferenced(ctx.sessions, ctx.store, [b.key for b in found.orphans])
    for name in found.scratch:
        (ctx.store.scratch_dir() / name).unlink(missing_ok=True)
    if found.removed or found.scratch:
        log.warning("garbage collection removed %d orphan blob(s) (%d bytes) and %d scratch file(s)",
                    len(found.removed), sum(b.size for b in found.orphans if b.key in found.removed),
                    len(found.scratch))
    return found


_last_sweep: dict[int, float] = {}
_sweep_lock = threading.Lock()


def sweep(ctx: AppContext) -> Collection | None:
    """Housekeeping: a pass every ``gc_every_s`` per process (0: never; ``learngene gc`` then)."""
    every = ctx.settings.gc_every_s
    if not every:
        return None
    with _sweep_lock:
        now = time.monotonic()
        last = _last_sweep.get(id(ctx))
        if last is not None and now - last < every:
            return None
        _last_sweep[id(ctx)] = now
    return collect(ctx)
