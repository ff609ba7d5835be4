"""Business rules of ancestries: strict validation of uploads before anything is stored."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.context import AppContext
from service.descendants.sizing import limits_of
from service.errors import InvalidRequest, NotFound
from service.models import Ancestry


def get_ancestry(session: Session, ancestry_id: int, field: str | None = None) -> Ancestry:
    row = session.get(Ancestry, ancestry_id)
    if row is None:
        raise NotFound(f"ancestry {ancestry_id} not found", field=field)
    return row


def list_page(session: Session, limit: int, after: int | None) -> Sequence[Ancestry]:
    q = select(Ancestry).order_by(Ancestry.id.desc()).limit(limit + 1)
    if after is not None:
        q = q.where(Ancestry.id < after)
    return session.scalars(q).all()


def parse_model_args(raw: str) -> dict[str, Any]:
    try:
        args = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"model_args is not JSON: {exc.msg}", field="model_args") from exc
    if not isinstance(args, dict):
        raise InvalidRequest("model_args must be a JSON object", field="model_args")
    return args


def register_upload(
    session: Session, ctx: AppContext, path: Path, *, name: str, architecture: str, model_args: dict[str, Any],
    metrics: dict[str, Any] | None = None, owner: str | None = None,
) -> Ancestry:
    """Validate ``path`` (strict timm load), move it into storage and add the row. ``path`` is consumed."""
    from engine.ancestry import AncestryError, load_ancestry  # torch stays out of the API's import time

    try:
        try:
            state, spec = load_ancestry(path, architecture, model_args, limits_of(ctx.settings))
        except AncestryError as exc:
            raise InvalidRequest(str(exc), field=exc.field) from exc
        param_count = sum(t.numel() for t in state.values())
        del state
        stored = ctx.store.put_file(path, move=True)
    finally:
        path.unlink(missing_ok=True)
    row = Ancestry(
        name=name,
        architecture=architecture,
        model_args=model_args,
        spec=spec.to_dict(),
        param_count=param_count,
        sha256=stored.sha256,
        size_bytes=stored.size,
        storage_key=stored.key,
        metrics=metrics or {},
        owner=owner,
    )
    session.add(row)
    session.flush()
    return row
