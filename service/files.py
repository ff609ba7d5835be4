"""Files over HTTP: serving stored blobs (strong ETag = sha256, conditional GET, byte ranges, header-only
reads). Uploads come in through ``service.uploads``."""
from __future__ import annotations

import json
import struct
from typing import Any

from fastapi import Request, Response
from fastapi.responses import FileResponse

from service.context import AppContext
from service.storage import CHUNK


class BlobResponse(FileResponse):
    """Starlette's FileResponse with 1 MiB reads instead of 64 KiB: each chunk is one trip through the event loop
    and the ASGI server, and on an 88 MB descendant the smaller chunks made the download 3x slower (measured with
    curl on loopback: 0.14 s vs 0.04 s)."""

    chunk_size = CHUNK


def etag_matches(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match")
    if not header:
        return False
    candidates = [c.strip().removeprefix("W/") for c in header.split(",")]
    return "*" in candidates or etag in candidates


def serve_blob(
    request: Request, ctx: AppContext, key: str, sha256: str, *, filename: str, media_type: str,
    extra_headers: dict[str, str] | None = None,
) -> Response:
    etag = f'"{sha256}"'
    headers = {"etag": etag, "cache-control": "public, max-age=31536000, immutable", **(extra_headers or {})}
    if etag_matches(request, etag):
        return Response(status_code=304, headers=headers)
    # Every backend gives a local file (S3 through its cache). Starlette's FileResponse answers Range / If-Range
    # itself (206, 416).
    return BlobResponse(ctx.store.local_path(key), media_type=media_type, filename=filename, headers=headers)


def safetensors_header(ctx: AppContext, key: str) -> tuple[dict[str, Any], int]:
    """Read just the JSON header of a stored safetensors file."""
    with ctx.store.open(key) as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), n
