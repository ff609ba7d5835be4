"""Business rules of ancestries: strict validation of uploads before anything is stored."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.ancestries.schemas import HuggingFaceConfig, Normalization, TimmHubConfig
from service.context import AppContext
from service.descendants.sizing import limits_of
from service.errors import ErrorDetail, InvalidRequest, NotFound
from service.keys.auth import Principal
from service.models import Ancestry
from service.ownership import PRIVATE, PUBLIC, can_see, stored_visibility, tombstone_error, visible


def get_ancestry(session: Session, ancestry_id: int, field: str | None = None,
                 caller: Principal | None = None, gone: bool = False) -> Ancestry:
    """The ancestry, as far as ``caller`` may see it: another owner's private one is not found, whatever it is
    wanted for (reading it, expanding or condensing from it). A deleted one is not found either (``gone``: 410
    with its tombstone, for the route that reads it)."""
    row = session.get(Ancestry, ancestry_id)
    if row is None or not can_see(caller, row.owner, row.visibility):
        raise NotFound(f"ancestry {ancestry_id} not found", field=field)
    if row.deleted_at is not None:
        raise tombstone_error(f"ancestry {ancestry_id}", row.deleted_by, row.deleted_at, row.sha256, gone, field)
    return row


def list_page(session: Session, limit: int, after: int | None, caller: Principal | None) -> Sequence[Ancestry]:
    q = (select(Ancestry).where(visible(caller, Ancestry.owner, Ancestry.visibility), Ancestry.deleted_at.is_(None))
         .order_by(Ancestry.id.desc()).limit(limit + 1))
    if after is not None:
        q = q.where(Ancestry.id < after)
    return session.scalars(q).all()


#: A config.json nests a few levels (id2label, pretrained_cfg); a form field less. Deeper is not one of them.
MAX_JSON_DEPTH = 16


def load_json(raw: str | bytes, field: str) -> Any:
    """JSON of a form field or a config file part, nested at most ``MAX_JSON_DEPTH`` levels."""
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"{field} is not JSON: {exc}", field=field) from exc
    except RecursionError:  # the parser's own limit, some thousand levels down
        value = None
        depth = MAX_JSON_DEPTH + 1
    else:
        depth = _depth(value)
    if depth > MAX_JSON_DEPTH:
        raise InvalidRequest(f"{field} nests deeper than {MAX_JSON_DEPTH} levels", field=field)
    return value


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion: a scalar is 0, ``[]`` 1, ``[[1]]`` 2."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, level + 1)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_json_form(raw: str, field: str, kind: type) -> Any:
    """A JSON form field (model_args, mean, std) of the expected ``kind``; empty means none given."""
    value = load_json(raw, field) if raw.strip() else None
    if value is not None and not isinstance(value, kind):
        raise InvalidRequest(f"{field} must be a JSON {kind.__name__}", field=field)
    return value


def parse_model_args(raw: str) -> dict[str, Any]:
    return parse_json_form(raw, "model_args", dict) or {}


def invalid(exc: ValidationError, prefix: str) -> InvalidRequest:
    """A 422 naming each field pydantic refused, under ``prefix`` (``config.hidden_act``)."""
    details = [ErrorDetail(field=".".join([prefix, *map(str, e["loc"])]), message=e["msg"]) for e in exc.errors()]
    return InvalidRequest(f"invalid {prefix}: {', '.join(d.field or prefix for d in details)}", details=details)


def parse_hf_config(raw: bytes | None) -> dict[str, Any] | None:
    """The ``config`` file part: a Hugging Face transformers ``config.json``, or a timm Hub snapshot's (it names
    an ``architecture`` and no ``model_type``). Every key the conversion reads is type-checked here, so that
    nothing unchecked reaches the engine or, through ``pretrained_cfg``, a descendant's ``config.json``."""
    if raw is None:
        return None
    config = load_json(raw, "config")
    if not isinstance(config, dict):
        raise InvalidRequest("config must be a JSON object (a Hugging Face config.json)", field="config")
    schema = TimmHubConfig if "model_type" not in config and "architecture" in config else HuggingFaceConfig
    try:
        checked = schema.model_validate(config)
    except ValidationError as exc:
        raise invalid(exc, "config") from exc
    return checked.model_dump(exclude_unset=True)


def parse_normalization(mean_raw: str, std_raw: str) -> dict[str, list[float]]:
    """``mean`` and ``std`` given at upload (JSON lists, one value per input channel), checked for shape and
    values as a timm Hub snapshot's are; their count against the channels is checked once the model is known."""
    given = {field: value for field, raw in (("mean", mean_raw), ("std", std_raw))
             if (value := parse_json_form(raw, field, list)) is not None}
    if not given:
        return {}
    if len(given) == 1:
        raise InvalidRequest("give mean and std together", field="std" if "mean" in given else "mean")
    try:
        return Normalization.model_validate(given).model_dump()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0])
        raise InvalidRequest(f"{field} must be a list of 1 to 16 finite numbers, std positive: {first['msg']}",
                             field=field) from exc


@dataclass(frozen=True)
class UploadForm:
    """What an upload says besides its weights, checked."""

    name: str
    architecture: str
    model_args: dict[str, Any]
    normalization: dict[str, list[float]]
    hf_config: dict[str, Any] | None
    visibility: str


#: The upload's text fields (besides the ``config`` file part), in the order the OpenAPI document lists them.
UPLOAD_FIELDS = ("name", "visibility", "architecture", "model_args", "mean", "std")
#: A Hugging Face config.json is a few KiB; anything much larger is not one.
MAX_CONFIG_BYTES = 1024 * 1024


def check_upload_form(ctx: AppContext, fields: dict[str, str], parts: dict[str, bytes], filename: str) -> UploadForm:
    """Everything about an upload but its weights, checked before they are stored: the form fields, the
    config.json, and what the engine can tell of the architecture without the weights (it builds nothing real:
    the model is made on the meta device). Raises InvalidRequest naming the field."""
    from engine.ancestry import AncestryError  # torch stays out of the API's import time
    from engine.upload import check_arguments

    if not filename.endswith(".safetensors"):
        raise InvalidRequest("only .safetensors weights are accepted", field="file")
    for field in ("name", "architecture"):
        if len(fields.get(field, "")) > 200:
            raise InvalidRequest(f"{field} may have at most 200 characters", field=field)
    visibility = fields.get("visibility") or PRIVATE
    if visibility not in (PUBLIC, PRIVATE):
        raise InvalidRequest("visibility is public or private", field="visibility")
    form = UploadForm(
        name=fields.get("name", "") or filename.removesuffix(".safetensors"),
        architecture=fields.get("architecture", ""),
        model_args=parse_model_args(fields.get("model_args", "")),
        normalization=parse_normalization(fields.get("mean", ""), fields.get("std", "")),
        hf_config=parse_hf_config(parts.get("config")),
        visibility=visibility,
    )
    if form.hf_config is None and not form.architecture:
        raise InvalidRequest("give the timm architecture, or the Hugging Face config.json as `config`",
                             field="architecture")
    try:
        check_arguments(form.architecture, form.model_args, limits_of(ctx.settings), form.hf_config)
    except AncestryError as exc:
        raise InvalidRequest(str(exc), field=exc.field) from exc
    return form


def upload_key(file_sha256: str, **arguments: Any) -> str:
    """What makes two uploads the same ancestry: the file's bytes and every argument given with it."""
    canonical = json.dumps({"file": file_sha256, **arguments}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def register_upload(
    session: Session, ctx: AppContext, path: Path, *, name: str, architecture: str, model_args: dict[str, Any],
    metrics: dict[str, Any] | None = None, owner: str | None = None, hf_config: dict[str, Any] | None = None,
    normalization: dict[str, list[float]] | None = None, visibility: str = "private", sha256: str | None = None,
) -> tuple[Ancestry, bool]:
    """Validate ``path`` (strict timm load, after conversion from a Hugging Face layout when ``hf_config`` is
    given), move it into storage and add the row; ``(row, True)``. The same file with the same arguments from the
    same owner answers its existing row, ``(row, False)``. ``path`` is consumed; ``sha256`` is its digest when
    the caller has it (an upload is hashed as it arrives), else it is read once to hash it."""
    from engine.ancestry import AncestryError  # torch stays out of the API's import time
    from engine.artifacts import sha256_file, write_safetensors
    from engine.upload import read_upload

    normalization = normalization or {}
    visibility = stored_visibility(owner, visibility)
    try:
        digest = sha256 or sha256_file(path)
        # Per owner: another owner's identical upload is theirs to see and delete, not this one's.
        key = upload_key(digest, architecture=architecture, model_args=model_args,
                         hf_config=hf_config, normalization=normalization, owner=owner, visibility=visibility)
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
                converted_digest = write_safetensors(upload.state, {"converted_from": upload.converted_from},
                                                     converted)
                stored = ctx.store.put_file(converted, move=True, sha256=converted_digest)
            finally:
                converted.unlink(missing_ok=True)
        else:
            stored = ctx.store.put_file(path, move=True, sha256=digest)
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
        visibility=visibility,
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
