"""Ids as the database can hold them. Integer primary keys are 32-bit on PostgreSQL (``int``), so an id past
2^31 - 1 can name nothing: it is refused before any query (PostgreSQL would raise, a 500, and SQLite overflows at
2^63). The same bound holds on both databases so that the API and its OpenAPI document do not depend on which."""
from __future__ import annotations

import re
from typing import Annotated

from fastapi import Path, Query

MAX_ID = 2**31 - 1
_DIGITS = re.compile(r"[0-9]{1,10}")

IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
IdQuery = Annotated[int | None, Query(ge=1, le=MAX_ID)]


def parse_id(text: str) -> int | None:
    """``text`` as an id, or None when it is not one (ASCII digits only: ``str.isdigit`` accepts "²")."""
    if not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if 1 <= value <= MAX_ID else None
