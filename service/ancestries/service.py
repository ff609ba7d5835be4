"""Business rules of ancestries: strict validation of uploads before anything is stored."""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
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


def parse_json_form(raw: str, field: str, kind: type) -> Any:
    """A JSON form field (model_args, mean, std) of the expected ``kind``; empty means none given."""
    try:
        value = json.loads(raw) if raw.strip() else None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"{field} is not JSON: {exc.msg}", field=field) from exc
    if value is not None and not isinstance(value, kind):
        raise InvalidRequest(f"{field} must be a JSON {kind.__name__}", field=field)
    return value


def parse_model_args(raw: str) -> dict[str, Any]:
    return parse_json_form(raw, "model_args", dict) or {}


def parse_hf_config(raw: bytes | None) -> dict[str, Any] | None:
    """The Hugging Face ``config.json`` sent as the ``config`` file part (small: a few KiB)."""
    if raw is None:
        return None
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"config is not a JSON file: {exc}", field="config") from exc
    if not isinstance(config, dict):
        raise InvalidRequest("config must be a JSON object (a Hugging Face config.json)", field="config")
    return config


def parse_normalization(mean_raw: str, std_raw: str) -> dict[str, list[float]]:
    """``mean`` and ``std`` given at upload (JSON lists, one value per input channel), checked for shape and
    values; their count against the channels is checked once the model is known."""
    given: dict[str, list[float]] = {}
    for field, raw in (("mean", mean_raw), ("std", std_raw)):
        values = parse_json_form(raw, field, list)
        if values is None:
            continue
        if not 0 < len(values) <= 16 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise InvalidRequest(f"{field} must be a list of 1 to 16 finite numbers", field=field)
        if field == "std" and any(v <= 0 for v in values):
            raise InvalidRequest("std values must be positive", field=field)
        given[field] = [float(v) for v in values]
    if len(given) == 1:
        missing = "std" if "mean" in given else "mean"
        raise InvalidRequest("give mean and std together", field=missing)
    return given


def upload_key(file_sha256: str, **arguments: Any) -> str:
    """What makes two uploads the same ancestry: the file's bytes and every argument given with it."""
    canonical = json.dumps({"file": file_sha256, **arguments}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def register_upload(
    session: Session, ctx: AppContext, path: Path, *, name: str, architecture: str, model_args: dict[str, Any],
    metrics: dict[str, Any] | None = None, owner: str | None = None, hf_config: dict[str, Any] | None = None,
    normalization: dict[str, list[float]] | None = None,
) -> tuple[Ancestry, bool]:
    """Validate ``path`` (strict timm load, after conversion from a Hugging Face layout when ``hf_config`` is
    given), move it into storage and add the row; ``(row, True)``. The same file with the same arguments from the
    same owner answers its existing row, ``(row, False)``. ``path`` is consumed."""
    from engine.ancestry import AncestryError  # torch stays out of the API's import time
    from engine.artifacts import sha256_file, write_safetensors
    from engine.upload import read_upload

    normalization = normalization or {}
    try:
        # Per owner: another owner's identical upload is theirs to see and delete, not this one's.
        key = upload_key(sha256_file(path), architecture=architecture, model_args=model_args,
                         hf_config=hf_config, normalization=normalization, owner=owner)
        existing = session.scalars(select(Ancestry).where(Ancestry.upload_key == key)).first()
        if existing is not None:
            return existing, False
        try:
            upload = read_upload(path, architecture, model_args, limits_of(ctx.settings), hf_config)
        except AncestryError as exc:
            raise InvalidRequest(str(exc), field=exc.field) from exc
        preprocessing = upload.preprocessing
        if normalization:
            if len(normalization["mean"]) != upload.spec.in_chans or len(normalization["std"]) != upload.spec.in_chans:
                raise InvalidRequest(f"mean and std need one value per input channel ({upload.spec.in_chans})",
                                     field="mean")
            preprocessing = {**preprocessing, **normalization}
        param_count = sum(t.numel() for t in upload.state.values())
        if upload.converted_from is not None:
            # Stored in timm's layout, so workers load every ancestry alike.
            converted = path.with_name(path.name + ".timm.safetensors")
            try:
                digest = write_safetensors(upload.state, {"converted_from": upload.converted_from}, converted)
                stored = ctx.store.put_file(converted, move=True, sha256=digest)
            finally:
                converted.unlink(missing_ok=True)
        else:
            stored = ctx.store.put_file(path, move=True)
        upload.state = {}  # the weights are stored; free them before the row is written
    finally:
        path.unlink(missing_ok=True)
    row = Ancestry(
        name=name,
        architecture=upload.architecture,
        model_args=upload.model_args,
        spec=upload.spec.to_dict(),
        param_count=param_count,
        sha256=stored.sha256,
        size_bytes=stored.size,
        storage_key=stored.key,
        metrics=metrics or {},
        owner=owner,
        family=upload.spec.family,
        preprocessing=preprocessing,
        converted_from=upload.converted_from,
        upload_key=key,
    )
    try:
        with session.begin_nested():  # a concurrent identical upload may have added the row since the lookup
            session.add(row)
    except IntegrityError:
        return session.scalars(select(Ancestry).where(Ancestry.upload_key == key)).one(), False
    return row, True
