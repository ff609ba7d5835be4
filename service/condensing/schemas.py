from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.bounds import MAX_ID
from service.ownership import Visibility
from engine.methods import CONDENSING_NAMES, MODE_SUMMARIES, MODES, offering

# The registry is the one list of methods and modes; the OpenAPI enums follow it.
CondenseMethod = Literal[CONDENSING_NAMES]  # type: ignore[valid-type]
CondenseMode = Literal[MODES]  # type: ignore[valid-type]


class CondenseRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True,
        json_schema_extra={
            "examples": [
                {"ancestry": 1, "method": "tleg", "learngene": "my-tleg", "mode": "fit"},
                {"ancestry": 1, "method": "wave", "dataset": "builtin:digits", "learngene": "my-wave",
                 "params": {"steps": 600}},
                {"ancestry": 1, "method": "wave", "mode": "refine", "dataset": "builtin:digits",
                 "learngene": "my-wave", "params": {"sizes": [{"embed_dim": 32, "num_heads": 2}], "steps": 200}},
            ]
        },
    )

    ancestry: int = Field(ge=1, le=MAX_ID, description="Ancestry id (see POST /v1/ancestries)")
    method: CondenseMethod
    learngene: str = Field(max_length=100, description="Name of the learngene the new version is added to")
    dataset: str | None = Field(
        None, max_length=500,
        description="`builtin:fashion-mnist`, `builtin:mnist`, `builtin:digits` or `builtin:shapes` (procedural "
        "shapes and strokes, generated: generic data for a target unlike the others), or several joined with `+` "
        "(`builtin:fashion-mnist+mnist`: 20 classes, MNIST's as 10-19), each optionally with "
        "`?classes=0-4` (a subset, relabelled 0..k-1 in order), `imagefolder:<path under an allowed root>` or "
        "`dataset:<id>` (uploaded)",
    )
    mode: CondenseMode | None = Field(
        None,
        description="; ".join(f"`{mode}` ({', '.join(offering(mode))}): {MODE_SUMMARIES[mode]}" for mode in MODES)
        + ". Default: train when a dataset is given (and the method trains), else fit.",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Method hyperparameters (defaults: GET /v1/methods)")
    evaluate: bool | None = Field(
        None, description="Add an evaluation card (few-step fine-tuning vs random init, on the dataset). Default: "
        "when a dataset is given; a data-free fit without one skips it.",
    )
    description: str = Field("", max_length=2000)
    visibility: Visibility | None = Field(
        None, description="The learngene's visibility from this version on: `private` (only its owner and admins see "
        "or expand it) or `public`. Default: a new learngene is private when made with a key; an existing one keeps "
        "its own.",
    )


class MethodParam(BaseModel):
    name: str
    default: Any
    description: str
    modes: list[str]


class MethodOut(BaseModel):
    name: str
    summary: str
    baseline: bool = Field(description="Expands straight from an ancestry (`POST /v1/descendants` with `ancestry`)")
    condensing: list[str] = Field(description="Modes a condensing job may use (empty: expansion-only baseline)")
    params: list[MethodParam]


class LossPoint(BaseModel):
    step: int
    loss: float


class LossCurve(BaseModel):
    job_id: str
    points: list[LossPoint]
