from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict

from service.ownership import Visibility


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
    visibility: Visibility
    created_at: dt.datetime
