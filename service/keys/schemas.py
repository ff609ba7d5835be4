from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.keys.auth import OWNER_PATTERN, SCOPES


class KeyLimitsIn(BaseModel):
    """Per-key limits; a field left out uses the configured default."""

    model_config = ConfigDict(extra="forbid", strict=True)

    rate_per_s: float | None = Field(None, gt=0, le=100_000)
    burst: int | None = Field(None, ge=1, le=1_000_000)
    max_concurrent_jobs: int | None = Field(None, ge=1, le=10_000)
    descendant_bytes_per_day: int | None = Field(None, ge=1, le=2**62)
    upload_bytes_per_day: int | None = Field(None, ge=1, le=2**62)


class KeyCreate(KeyLimitsIn):
    owner: str = Field(pattern=OWNER_PATTERN, description="Who the key belongs to: what it creates is theirs")
    scopes: list[str] = Field(default_factory=lambda: ["read", "write"], min_length=1, max_length=3,
                              description="From read, write, admin (write includes read, admin everything)")

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(SCOPES))
        if unknown:
            raise ValueError(f"unknown scopes {unknown}; choose from {list(SCOPES)}")
        return sorted(set(value), key=SCOPES.index)


class KeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    prefix: str
    owner: str
    scopes: list[str]
    rate_per_s: float | None
    burst: int | None
    max_concurrent_jobs: int | None
    descendant_bytes_per_day: int | None
    upload_bytes_per_day: int | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None

    @field_validator("scopes", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return value.split(",") if isinstance(value, str) else value


class KeyCreated(KeyOut):
    key: str = Field(description="The key itself, shown this once: only its hash is stored")
