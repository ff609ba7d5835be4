"""Which stored blobs the registry still needs. Blobs are content-addressed, so rows may share one (the same file
uploaded by two owners, an ancestry seeded twice): a blob is removed only once no live row names it. Deleting
(``service/registry/deletion.py``), the descendant cache (``service/descendants/cache.py``) and garbage
collection (``service/registry/gc.py``) all ask here."""
from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable

from sqlalchemy import Select, select, union
from sqlalchemy.orm import Session, sessionmaker

from service.models import Ancestry, DatasetRow, DescendantRow, LearngeneVersion
from service.storage import ArtifactStore

log = logging.getLogger(__name__)

#: Descendant statuses whose weights are in storage (``evicted``: the row stays, its blob went).
STORED_DESCENDANT = ("ready", "failed", "pending")


def _live_keys() -> Select[tuple[str | None]]:
    return union(  # type: ignore[return-value]
        select(Ancestry.storage_key).where(Ancestry.deleted_at.is_(None)),
        select(DatasetRow.storage_key).where(DatasetRow.deleted_at.is_(None)),
        select(LearngeneVersion.storage_key).where(LearngeneVersion.deleted_at.is_(None)),
        select(DescendantRow.storage_key).where(DescendantRow.deleted_at.is_(None),
                                                DescendantRow.status.in_(STORED_DESCENDANT)),
    )


def referenced_keys(session: Session) -> set[str]:
    """Every storage key a live row names."""
    return {key for (key,) in session.execute(_live_keys()) if key}


def unreferenced(session: Session, keys: Iterable[str]) -> set[str]:
    """Those of ``keys`` no live row names any more."""
    wanted = {k for k in keys if k}
    if not wanted:
        return set()
    live = _live_keys().subquery()
    still = {key for (key,) in session.execute(select(live.c[0]).where(live.c[0].in_(wanted)))}
    return wanted - still


def remove_unreferenced(sessions: sessionmaker[Session], store: ArtifactStore, keys: Iterable[str]) -> list[str]:
    """After a commit: remove from storage each of ``keys`` that no live row names (checked again now, in a new
    transaction: a row committed meanwhile keeps its blob). Returns the keys removed. Best effort: a blob left
    behind is an orphan that garbage collection removes later."""
    keys = list(keys)
    if not keys:
        return []
    with sessions() as session:
        gone = sorted(unreferenced(session, keys))
        dataset_shas = _unused_dataset_dirs(session, gone)
    removed = []
    for key in gone:
        try:
            store.delete(key)
            removed.append(key)
        except Exception:
            log.exception("could not remove blob %s from storage; garbage collection will", key)
    for sha in dataset_shas:  # the folder an uploaded dataset was unpacked to (rebuilt from its blob when needed)
        shutil.rmtree(store.local_dir(f"datasets/{sha}"), ignore_errors=True)
    return removed


def _unused_dataset_dirs(session: Session, keys: list[str]) -> list[str]:
    shas = [k.rsplit("/", 1)[-1] for k in keys if k.startswith("sha256/")]
    if not shas:
        return []
    live = set(session.scalars(select(DatasetRow.sha256).where(DatasetRow.sha256.in_(shas),
                                                                DatasetRow.deleted_at.is_(None))))
    return [s for s in shas if s not in live]
