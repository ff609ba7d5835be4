from __future__ import annotations

from pydantic import BaseModel, Field


class DeletedOut(BaseModel):
    """What a deletion removed: ``kind:id`` (``learngene:name:version`` for versions), the object asked for and
    what went with it (the descendants of a version, learngene or ancestry)."""

    deleted: list[str]


class AliasIn(BaseModel):
    model_config = {"extra": "forbid", "strict": True}

    version: int = Field(ge=1, le=2**31 - 1, description="The version the alias points at")


class Stored(BaseModel):
    count: int
    bytes: int


class QuotaLeft(BaseModel):
    """Today's (UTC) quotas of one key (quotas count per key): bytes of new descendants and uploads, job slots."""

    key: str = Field(description="`key:<id>` (its prefix in `prefix`), `admin` (the bootstrap token) or `anonymous`")
    prefix: str | None
    descendant_bytes_limit: int
    descendant_bytes_used_today: int
    descendant_bytes_left_today: int
    upload_bytes_limit: int
    upload_bytes_used_today: int
    upload_bytes_left_today: int
    max_concurrent_jobs: int


class OwnerUsage(BaseModel):
    owner: str | None = Field(description="null: what nobody owns (made while keys were not required)")
    stored: dict[str, Stored] = Field(description="Live rows and the bytes of their blobs, per kind: ancestries, "
                                      "datasets, learngene_versions (of the owner's learngenes), descendants (those "
                                      "whose weights are stored; evicted ones are not counted). A blob two rows "
                                      "share counts for each")
    stored_bytes: int
    descendants_produced: int = Field(description="Descendants first asked for by the owner (evicted ones too)")
    descendants_evicted: int
    jobs: dict[str, int] = Field(description="The owner's jobs by state")
    quotas: list[QuotaLeft] = Field(description="Each active key of the owner (or the anonymous bucket)")


class UsageReport(BaseModel):
    owners: list[OwnerUsage]
    descendant_cache_bytes: int = Field(description="The descendant cache's budget (0: unbounded)")
    descendant_cache_used_bytes: int = Field(description="Bytes of stored descendant weights, every owner's")


class OrphanOut(BaseModel):
    key: str
    size_bytes: int


class GarbageOut(BaseModel):
    dry_run: bool
    orphans: list[OrphanOut] = Field(description="Blobs no row names, past the grace period")
    orphan_bytes: int
    removed: list[str] = Field(description="The keys removed (empty in a dry run)")
    scratch_files: int = Field(description="Scratch files past the grace period (removed unless a dry run)")
    within_grace: int = Field(description="Blobs no row names yet, left alone: younger than the grace period")
