from __future__ import annotations

from pydantic import BaseModel, Field


class DeletedOut(BaseModel):
    """What a deletion removed: ``kind:id`` (``learngene:name:version`` for versions), the object asked for and
    what went with it (the descendants of a version, learngene or ancestry)."""

    deleted: list[str]


class AliasIn(BaseModel):
    model_config = {"extra": "forbid", "strict": True}

    version: int = Field(ge=1, le=2**31 - 1, description="The version the alias points at")
