from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict

from service.ownership import Visibility


class AncestryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    architecture: str
    model_args: dict[str, Any]
    spec: dict[str, Any]
    param_count: int
    sha256: str
    size_bytes: int
    metrics: dict[str, Any]
    owner: str | None = None
    visibility: Visibility
    created_at: dt.datetime
    family: str
    #: Input mean, std, interpolation and crop, written into every descendant's config.json.
    preprocessing: dict[str, Any]
    #: The Hugging Face model_type the upload was converted from (architecture and model_args are what it became).
    converted_from: str | None = None
