"""Descendants are a cache with a byte budget (``LEARNGENE_DESCENDANT_CACHE_BYTES``).

A descendant is deterministic: the same source, spec, seed and head give the same bytes. So when the weights of
the ready descendants pass the budget, the least recently used unpinned ones are evicted: their blob leaves
storage (once no other row names it), their row stays with its sha256 and status ``evicted``. The next request,
download or /hub fetch makes the weights again with a new expand job, which refuses to store bytes whose sha256
differs from the recorded one (``service/descendants/tasks.py``).

Eviction runs when an expansion is about to store new weights (room is made for them) and on every sweep of the
job maintenance loop (a budget lowered since). The descendant that is arriving may alone exceed the budget: it
stays, as do pinned ones, so the budget is a target, not a hard ceiling.
"""
from __future__ import annotations

import logging

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from service.blobs import remove_unreferenced
from service.context import AppContext
from service.models import DescendantRow
from service.settings import Settings
from service.storage import ArtifactStore

log = logging.getLogger(__name__)


def stored_bytes(session: Session) -> int:
    """Bytes of weights of the ready descendants (what the budget bounds)."""
    return int(session.scalar(select(func.coalesce(func.sum(DescendantRow.size_bytes), 0)).where(
        DescendantRow.status == "ready", DescendantRow.deleted_at.is_(None))) or 0)


def evict_over_budget(sessions: sessionmaker[Session], store: ArtifactStore, settings: Settings,
                      incoming: int = 0) -> list[int]:
    """Evict least recently used unpinned descendants until the ready ones, plus ``incoming`` bytes about to be
    stored, fit the budget. Returns the ids evicted."""
    budget = settings.descendant_cache_bytes
    if not budget:
        return []
    evicted: list[int] = []
    keys: list[str] = []
    with sessions.begin() as session:
        excess = stored_bytes(session) + incoming - budget
        if excess <= 0:
            return []
        candidates = session.execute(
            select(DescendantRow.id, DescendantRow.size_bytes, DescendantRow.storage_key)
            .where(DescendantRow.status == "ready", DescendantRow.deleted_at.is_(None),
                   DescendantRow.pinned.is_(False))
            .order_by(DescendantRow.last_used_at.asc().nulls_first(), DescendantRow.id.asc())
        ).all()
        for descendant_id, size, key in candidates:
            if excess <= 0:
                break
            # Only if it is still ready and unpinned: a concurrent pin or deletion wins.
            done = session.execute(
                update(DescendantRow)
                .where(DescendantRow.id == descendant_id, DescendantRow.status == "ready",
                       DescendantRow.pinned.is_(False), DescendantRow.deleted_at.is_(None))
                .values(status="evicted")
            ).rowcount
            if done:
                evicted.append(descendant_id)
                keys.append(key)
                excess -= size or 0
    if evicted:
        log.info("descendant cache over its budget of %d bytes: evicted the weights of descendants %s",
                 budget, evicted)
        remove_unreferenced(sessions, store, keys)
    return evicted


def enforce_budget(ctx: AppContext) -> list[int]:
    """Housekeeping (the job maintenance loop): a budget lowered since the last expansion is enforced too."""
    return evict_over_budget(ctx.sessions, ctx.store, ctx.settings)
