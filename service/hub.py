"""A Hugging Face Hub-compatible view of descendants, for ``HF_ENDPOINT=http://<host>:<port>/hub``.

A repository id names a learngene and a size: ``<learngene>.v<N>/<slug>`` pins a version, ``<learngene>/<slug>``
follows the revision (``main`` = the ``latest`` alias, a number = that version, any other alias), and
``ancestry-<id>.<method>/<slug>`` uses an ancestry directly. The slug is ``d6-e64-h4-r4-c10-s0`` (depth,
embed_dim, heads, mlp ratio, classes, seed; any subset). Asking for a size nobody asked for before produces it
on the fly, so ``timm.create_model("hf-hub:digits-tleg/d4", pretrained=True)`` just works.

Producing a descendant is a write: once keys are required, every route here needs one, which ``huggingface_hub``
(and so timm) sends from ``HF_TOKEN`` as a bearer token.
"""
from __future__ import annotations

import hashlib
import json
import re

from fastapi import APIRouter, Request, Response

from engine.methods import BASELINE_NAMES
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.context import AppContext
from service.db import unit_of_work
from service.deps import CtxDep, Writer
from service.descendants import service as descendants
from service.descendants.endpoints import is_settled
from service.files import serve_blob
from service.descendants.schemas import DescendantRequest, SpecIn
from service.errors import Forbidden, NotFound, NotPermitted, ServiceError, TooManyRequests, Unavailable
from service.jobs import waiting
from service.keys.auth import Principal
from service.models import DescendantRow

router = APIRouter(prefix="/hub", tags=["hub"], include_in_schema=False)

_PINNED = re.compile(r"^(?P<name>.+)\.v(?P<version>\d+)$")
_ANCESTRY = re.compile(rf"^ancestry-(?P<id>\d+)\.(?P<method>{'|'.join(map(re.escape, BASELINE_NAMES))})$")
FILES = ("config.json", "model.safetensors")


def _request_for(namespace: str, slug: str, revision: str) -> DescendantRequest:
    spec, seed = descendants.parse_slug(slug)
    if m := _ANCESTRY.match(namespace):
        return DescendantRequest(ancestry=int(m["id"]), method=m["method"], spec=SpecIn(**spec), seed=seed)
    if m := _PINNED.match(namespace):
        return DescendantRequest(learngene=f"{m['name']}:{m['version']}", spec=SpecIn(**spec), seed=seed)
    ref = "latest" if revision == "main" or re.fullmatch(r"[0-9a-f]{40}", revision) else revision
    return DescendantRequest(learngene=f"{namespace}:{ref}", spec=SpecIn(**spec), seed=seed)


def _request(ctx: AppContext, namespace: str, slug: str, revision: str, caller: Principal) -> int:
    try:
        req = _request_for(namespace, slug, revision)
        with unit_of_work(ctx.sessions) as uow:
            row, _ = descendants.request_descendant(uow, ctx, req, caller)
            return row.id
    except (NotPermitted, Forbidden, TooManyRequests):
        raise  # the caller's rights and quotas, not the repository's existence
    except ServiceError as exc:
        raise NotFound(f"repository {namespace}/{slug}: {exc.message}") from exc
    except ValueError as exc:  # pydantic validation of the slug's numbers
        raise NotFound(f"repository {namespace}/{slug}: {exc}") from exc


async def _descendant(ctx: AppContext, namespace: str, slug: str, revision: str, caller: Principal) -> DescendantRow:
    """The repository's descendant, produced on first request; waits for it on the event loop, not a thread."""
    descendant_id = await run_in_threadpool(_request, ctx, namespace, slug, revision, caller)
    await waiting.wait_until(ctx, is_settled(descendant_id), ctx.settings.max_wait_s)
    row = await waiting.read(ctx, lambda session: session.get(DescendantRow, descendant_id))
    assert isinstance(row, DescendantRow)
    if row.status == "pending":
        raise Unavailable(f"repository {namespace}/{slug} is still being produced; try again shortly")
    if row.status != "ready":
        raise NotFound(f"repository {namespace}/{slug} is {row.status} (a new request tries again)")
    return row


def _not_found(message: str) -> JSONResponse:
    # huggingface_hub maps this header to EntryNotFoundError, which timm expects for optional files.
    return JSONResponse({"error": message}, status_code=404, headers={"X-Error-Code": "EntryNotFound"})


def _config_bytes(row: DescendantRow) -> bytes:
    return json.dumps(row.config, indent=2, sort_keys=True).encode()


def commit_of(row: DescendantRow) -> str:
    """A 40-hex revision id: a descendant's content never changes, so its sha256 names its only commit."""
    assert row.sha256 is not None
    return row.sha256[:40]


@router.api_route("/{namespace}/{slug}/resolve/{revision}/{filename}", methods=["GET", "HEAD"])
async def resolve_file(namespace: str, slug: str, revision: str, filename: str, request: Request,
                       ctx: CtxDep, caller: Writer) -> Response:
    if filename not in FILES:
        return _not_found(f"{filename} is not in this repository (it has {', '.join(FILES)})")
    row = await _descendant(ctx, namespace, slug, revision, caller)
    headers = {"X-Repo-Commit": commit_of(row)}
    if filename == "model.safetensors":
        assert row.storage_key is not None and row.sha256 is not None
        # In a thread: with S3 storage, finding the local file may mean downloading it into the cache.
        return await run_in_threadpool(serve_blob, request, ctx, row.storage_key, row.sha256, filename=filename,
                                       media_type="application/octet-stream", extra_headers=headers)
    body = _config_bytes(row)
    etag = f'"{hashlib.sha256(body).hexdigest()}"'
    headers |= {"ETag": etag, "Content-Length": str(len(body))}
    if request.method == "HEAD":
        return Response(status_code=200, headers=headers, media_type="application/json")
    return Response(body, headers=headers, media_type="application/json")


@router.get("/api/models/{namespace}/{slug}")
@router.get("/api/models/{namespace}/{slug}/revision/{revision}")
async def model_info(namespace: str, slug: str, ctx: CtxDep, caller: Writer,
                     revision: str = "main") -> JSONResponse:
    row = await _descendant(ctx, namespace, slug, revision, caller)
    return JSONResponse({
        "id": f"{namespace}/{slug}",
        "modelId": f"{namespace}/{slug}",
        "sha": commit_of(row),
        "library_name": "timm",
        "tags": ["timm", "image-classification", f"learngene:{row.method}"],
        "siblings": [{"rfilename": f} for f in FILES],
        "private": False,
    })
