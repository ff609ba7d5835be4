from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.bounds import MAX_ID
from engine.methods import BASELINE_NAMES, HEADS, METHOD_NAMES

# The registry is the one list of methods; the OpenAPI enum follows it.
MethodName = Literal[METHOD_NAMES]  # type: ignore[valid-type]
HeadChoice = Literal[HEADS]  # type: ignore[valid-type]


class SpecIn(BaseModel):
    """A descendant size. Fields left out default to the source's own (``{"depth": 6}`` keeps its width)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    depth: int | None = Field(None, ge=1, le=1024)
    embed_dim: int | None = Field(None, ge=1, le=65536)
    num_heads: int | None = Field(None, ge=1, le=1024)
    mlp_ratio: float | None = Field(None, gt=0, le=32)
    num_classes: int | None = Field(None, ge=1, le=1_000_000)
    img_size: int | None = Field(None, ge=1, le=4096, description="Input size, a multiple of the patch size: "
                                 "the position embedding is resampled (timm's resample_abs_pos_embed)")


class BudgetIn(BaseModel):
    """A resource budget; the planner picks the largest descendant (most parameters) that fits all limits."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_params: int | None = Field(None, ge=1)
    max_gflops: float | None = Field(None, gt=0)
    max_latency_ms: float | None = Field(None, gt=0, description="Forward latency for one image on `device`")
    device: Literal["cpu", "cuda"] = "cpu"
    num_classes: int | None = Field(None, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _one_limit(self) -> "BudgetIn":
        if self.max_params is None and self.max_gflops is None and self.max_latency_ms is None:
            raise ValueError("a budget needs at least one of max_params, max_gflops, max_latency_ms")
        return self


class DescendantRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True,
        json_schema_extra={
            "examples": [
                {"learngene": "digits-tleg", "spec": {"depth": 6}, "seed": 0},
                {"learngene": "digits-wave:latest", "budget": {"max_params": 200000}},
                {"ancestry": 1, "method": "weight-selection", "spec": {"depth": 3, "embed_dim": 32, "num_heads": 2}},
            ]
        },
    )

    learngene: str | None = Field(None, description="`name` or `name:version-or-alias`", max_length=200)
    ancestry: int | None = Field(None, ge=1, le=MAX_ID,
                                 description=f"An ancestry id (with a baseline method: {' or '.join(BASELINE_NAMES)})")
    method: MethodName | None = None
    spec: SpecIn | None = None
    budget: BudgetIn | None = None
    seed: int = Field(0, ge=0, le=2**31 - 1)
    head: HeadChoice = Field(
        "inherit", description="With the learngene's own number of classes: `inherit` keeps its head, `fresh` draws "
        "a new one (a new task with as many classes). Other class counts always get a fresh head.",
    )

    @model_validator(mode="after")
    def _source_and_size(self) -> "DescendantRequest":
        if (self.learngene is None) == (self.ancestry is None):
            raise ValueError("give exactly one source: learngene or ancestry")
        if self.ancestry is not None and self.method not in BASELINE_NAMES:
            raise ValueError(f"from an ancestry, method must be one of {list(BASELINE_NAMES)}")
        if self.spec is not None and self.budget is not None:
            raise ValueError("give a spec or a budget, not both")
        return self


class DescendantSource(BaseModel):
    learngene: str | None = None
    version: int | None = None
    ancestry: int | None = None


class DescendantOut(BaseModel):
    id: int
    status: Literal["pending", "ready", "failed", "evicted"] = Field(
        description="evicted: its weights left the descendant cache; its weights route (or the same request) makes "
        "them again, the same bytes")
    source: DescendantSource
    method: str
    spec: dict[str, Any]
    seed: int
    param_count: int
    gflops: float
    sha256: str | None
    size_bytes: int | None
    weights_url: str
    config_url: str
    metadata_url: str
    hub_repo_id: str
    job_id: str | None
    error: str | None = Field(None, description="Why its last job did not produce it (a new request tries again)")
    error_code: str | None = Field(None, description="The job's error code, or cancelled")
    details: dict[str, Any]
    created_at: dt.datetime
    owner: str | None = Field(None, description="Who asked for it first; they, its source's owner and admins may "
                              "pin or delete it")
    pinned: bool = Field(False, description="A pinned descendant's weights are never evicted from the cache")
    last_used_at: dt.datetime | None = None


class DescendantPatch(BaseModel):
    """What a descendant's owner may change."""

    model_config = ConfigDict(extra="forbid", strict=True)

    pinned: bool = Field(description="true: its weights are never evicted from the descendant cache")


class TensorInfo(BaseModel):
    dtype: str
    shape: list[int]


class WeightsMetadata(BaseModel):
    """The safetensors header of a descendant: names, shapes, dtypes and provenance, without the weights."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_bytes: int
