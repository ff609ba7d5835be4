"""Who is asking: API keys (stored as sha256 hashes), the bootstrap admin token, or an anonymous caller.

A key is 32 random bytes, so one round of sha256 is enough to store it (nothing to brute-force, unlike a
password); lookups go by the hash, and the bootstrap token is compared in constant time, as bytes, so any
header value (non-ASCII included) is only ever a wrong key.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from sqlalchemy.orm import Session

from service.keys import repository
from service.models import ApiKey
from service.settings import Settings

SCOPES = ("read", "write", "admin")
#: Each scope includes the ones before it: a writer may read, an admin may do everything.
_RANK = {scope: i for i, scope in enumerate(SCOPES)}
OWNER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$"
BOOTSTRAP_OWNER = "admin"
KEY_PREFIX = "lg_"


@dataclass(frozen=True)
class Limits:
    rate_per_s: float
    burst: int
    max_concurrent_jobs: int
    descendant_bytes_per_day: int
    upload_bytes_per_day: int


@dataclass(frozen=True)
class Principal:
    #: What rate limits and quotas count against: ``key:<id>``, ``admin`` or ``anonymous``.
    bucket: str
    #: Who owns what this caller creates; None for anonymous callers.
    owner: str | None
    scopes: frozenset[str]
    limits: Limits
    #: A bearer token was sent but is no key (wrong, revoked, malformed).
    bad_token: bool = False
    #: The API key's row (None for anonymous callers and the bootstrap token): what a long request checks again.
    key_id: int | None = None

    @property
    def authenticated(self) -> bool:
        return self.owner is not None

    def has(self, scope: str) -> bool:
        return any(_RANK[s] >= _RANK[scope] for s in self.scopes)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def default_limits(settings: Settings) -> Limits:
    return Limits(settings.rate_limit_per_s, settings.rate_limit_burst, settings.max_concurrent_jobs,
                  settings.descendant_bytes_per_day, settings.upload_bytes_per_day)


def anonymous(settings: Settings, bad_token: bool = False) -> Principal:
    limits = Limits(settings.anonymous_rate_per_s, settings.anonymous_burst, settings.max_concurrent_jobs,
                    settings.descendant_bytes_per_day, settings.upload_bytes_per_day)
    return Principal("anonymous", None, frozenset(), limits, bad_token=bad_token)


def key_principal(settings: Settings, row: ApiKey) -> Principal:
    base = default_limits(settings)
    limits = Limits(
        row.rate_per_s or base.rate_per_s,
        row.burst or base.burst,
        row.max_concurrent_jobs or base.max_concurrent_jobs,
        row.descendant_bytes_per_day or base.descendant_bytes_per_day,
        row.upload_bytes_per_day or base.upload_bytes_per_day,
    )
    return Principal(f"key:{row.id}", row.owner, frozenset(row.scopes.split(",")), limits, key_id=row.id)


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def authenticate(session: Session, settings: Settings, token: str | None) -> Principal:
    if token is None:
        return anonymous(settings)
    raw = token.encode("utf-8", "surrogateescape")
    if settings.api_token and hmac.compare_digest(raw, settings.api_token.encode()):
        return Principal(BOOTSTRAP_OWNER, BOOTSTRAP_OWNER, frozenset({"admin"}), default_limits(settings))
    if token.startswith(KEY_PREFIX) and len(raw) < 200:
        row = repository.active_by_hash(session, hash_key(token))
        if row is not None:
            return key_principal(settings, row)
    return anonymous(settings, bad_token=True)


def still_valid(session: Session, caller: Principal) -> bool:
    """Whether the key a long request (an event stream) began with is still active: a revocation ends what a
    key holds open, not only its next request."""
    return caller.key_id is None or repository.is_active(session, caller.key_id)


def keys_required(session: Session, settings: Settings) -> bool:
    """Writes need a key once the bootstrap token is set or any key exists."""
    return bool(settings.api_token) or repository.any_active(session)
