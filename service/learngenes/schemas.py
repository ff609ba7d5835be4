from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from service.ownership import Visibility


class LearngeneOut(BaseModel):
    name: str
    method: str
    family: str
    description: str
    owner: str | None = Field(description="Its first publisher: only they (and admins) publish new versions")
    visibility: Visibility
    created_at: dt.datetime
    latest_version: int | None
    version_count: int
    aliases: dict[str, int]


class Tombstone(BaseModel):
    """What is left of something deleted: who deleted it, when, and the sha256 of what it was."""

    deleted_by: str | None
    deleted_at: dt.datetime
    sha256: str | None


class Lineage(BaseModel):
    """Where a version came from: its ancestry, the dataset it was condensed on, and the job that made it (each
    null when it is private to someone else)."""

    ancestry_id: int | None
    ancestry_name: str | None
    dataset: str | None
    job_id: str | None
    mode: str | None
    ancestry_deleted: Tombstone | None = Field(None, description="Set when the ancestry was deleted since")
    dataset_deleted: Tombstone | None = Field(None, description="Set when the uploaded dataset was deleted since")


class LearngeneVersionOut(BaseModel):
    learngene: str
    version: int
    method: str
    aliases: list[str]
    lineage: Lineage
    hyperparams: dict[str, Any]
    metrics: dict[str, Any]
    meta: dict[str, Any]
    sha256: str | None
    size_bytes: int | None
    created_at: dt.datetime
    tensors_url: str
