"""Business rules of API keys: creation (the key is returned once), revocation, listing."""
from __future__ import annotations

import secrets
from collections.abc import Sequence

from sqlalchemy.orm import Session

from service.errors import InvalidRequest, NotFound
from service.keys import repository
from service.keys.auth import KEY_PREFIX, hash_key
from service.keys.schemas import KeyCreate
from service.models import ApiKey, utcnow


def create_key(session: Session, req: KeyCreate) -> tuple[ApiKey, str]:
    """A new key and its row; the key itself exists only in the return value."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        prefix=key[:10],
        key_hash=hash_key(key),
        owner=req.owner,
        scopes=",".join(req.scopes),
        rate_per_s=req.rate_per_s,
        burst=req.burst,
        max_concurrent_jobs=req.max_concurrent_jobs,
        descendant_bytes_per_day=req.descendant_bytes_per_day,
        upload_bytes_per_day=req.upload_bytes_per_day,
    )
    session.add(row)
    session.flush()
    return row, key


def find_key(session: Session, ref: str) -> ApiKey:
    """A key by its id or its prefix (what ``keys list`` shows)."""
    if ref.isascii() and ref.isdigit() and len(ref) < 10:
        row = repository.get(session, int(ref))
        if row is None:
            raise NotFound(f"key {ref} not found")
        return row
    rows = repository.by_prefix(session, ref)
    if not rows:
        raise NotFound(f"no key with prefix {ref!r}")
    if len(rows) > 1:
        raise InvalidRequest(f"prefix {ref!r} names {len(rows)} keys; use the id", field="key")
    return rows[0]


def revoke(session: Session, row: ApiKey) -> ApiKey:
    """Revoking is immediate (every request looks its key up) and idempotent."""
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    session.flush()
    return row


def list_keys(session: Session, limit: int, after: int | None, owner: str | None) -> Sequence[ApiKey]:
    return repository.list_page(session, limit, after, owner)
