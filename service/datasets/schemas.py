from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    uri: str
    num_classes: int
    num_images: int
    sha256: str
    size_bytes: int
    owner: str | None = None
    created_at: dt.datetime
