"""Who sees and who changes what.

* What a key makes belongs to the key's owner (ancestries, datasets, jobs, learngenes: a learngene to its first
  publisher). What nobody owns (made while keys were not required) is everyone's. The seeded learngenes belong
  to the system owner, the bootstrap admin.
* Ancestries, datasets and learngenes are public or private. A private one exists only for its owner and
  admins: for everyone else every route that would read or use it (directly, or by expanding, condensing or
  training from it, in listings, lineage and /hub) answers as if it did not exist, 404 and never 403, so that
  neither ids nor names leak. Jobs are always private. A descendant is seen by whoever sees its source.
* Deleting is for the owner (and admins), like changing; what others merely see answers 403, what they cannot see
  404. A deleted row stays as a tombstone: where it is read it answers 410 (who deleted it, when, its sha256), where
  it would be used 404; listings leave it out.
* Changing a learngene (publishing a version, which moves ``latest``) is for its owner and admins; others
  who can see it get 403.
"""
from __future__ import annotations

import datetime as dt
from typing import Literal

from sqlalchemy import ColumnElement, or_, true
from sqlalchemy.orm import InstrumentedAttribute

from service.errors import Forbidden, Gone, NotFound
from service.keys.auth import BOOTSTRAP_OWNER, Principal

PUBLIC = "public"
PRIVATE = "private"
Visibility = Literal["public", "private"]
#: Owner of what the service makes by itself (the seeded learngenes): the bootstrap admin.
SYSTEM_OWNER = BOOTSTRAP_OWNER


def stored_visibility(owner: str | None, requested: str) -> str:
    """What nobody owns cannot be kept from anyone: it is stored as public, whatever was asked."""
    return requested if owner is not None else PUBLIC


def default_visibility(owner: str | None) -> str:
    """What an owner makes is private unless they say otherwise."""
    return PRIVATE if owner is not None else PUBLIC


def can_see(caller: Principal | None, owner: str | None, visibility: str) -> bool:
    """``caller`` None is the service itself (seeding, workers): it sees everything."""
    return (caller is None or visibility == PUBLIC or owner is None or caller.owner == owner
            or caller.has("admin"))


def require_visible(caller: Principal | None, owner: str | None, visibility: str, what: str,
                    field: str | None = None) -> None:
    if not can_see(caller, owner, visibility):
        raise NotFound(f"{what} not found", field=field)


def visible(caller: Principal | None, owner: InstrumentedAttribute[str | None],
            visibility: InstrumentedAttribute[str] | None = None) -> ColumnElement[bool]:
    """The SQL form of :func:`can_see`, for listings; without ``visibility`` the rows are private (jobs)."""
    if caller is None or caller.has("admin"):
        return true()
    allowed: list[ColumnElement[bool]] = [owner.is_(None)]
    if visibility is not None:
        allowed.append(visibility == PUBLIC)
    if caller.owner is not None:
        allowed.append(owner == caller.owner)
    return or_(*allowed)


def check_may_change(caller: Principal | None, owner: str | None, what: str, field: str | None = None) -> None:
    """Only the owner (and admins) change what an owner made; what nobody owns, anyone who may write changes."""
    if caller is not None and owner is not None and caller.owner != owner and not caller.has("admin"):
        raise Forbidden(f"{what} belongs to another owner", field=field)


def tombstone_error(what: str, by: str | None, at: dt.datetime, sha256: str | None, gone: bool,
                    field: str | None = None) -> NotFound | Gone:
    """What a deleted object answers: 410 naming its tombstone where it is read, 404 where it would be used."""
    message = f"{what} was deleted by {by or 'an anonymous caller'} at {at:%Y-%m-%dT%H:%M:%SZ}" + (
        f" (sha256 {sha256})" if sha256 else "")
    return Gone(message, field=field) if gone else NotFound(message, field=field)
