"""Receiving an upload (a multipart body: form fields, then one file part) as it arrives.

FastAPI's own form parsing reads the whole body, spooling files to a temporary folder, before any dependency
runs: a 2 GB upload with a bad argument, or from a caller without the scope, was written to disk (and then
copied into storage) before it was refused. Here the route's dependencies (key, scope) run first, then:

* the form fields must come before the file part (every HTTP client sends ``data`` before ``files``): they are
  checked, whole, when the file part begins, so a refused upload stores nothing; a field after the file part
  is refused;
* the file part is written once, into the store's scratch space (storing it is then a rename) and hashed as it
  streams;
* the bytes received count against the caller's daily upload quota as they arrive, not as announced.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import anyio.to_thread
from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.context import AppContext
from service.errors import InvalidRequest, PayloadTooLarge
from service.keys.auth import Principal
from service.limits.quotas import charge_upload

T = TypeVar("T")
#: The file part is written to disk in blocks of this size (one trip to a worker thread each).
WRITE_BLOCK = 1024 * 1024
#: Bytes received are charged against the upload quota in steps of this size (and the rest at the end), so a
#: caller past their quota is stopped within this many bytes.
CHARGE_STEP = 8 * 1024 * 1024
#: A text form field (names, JSON arguments) is small; a file part other than the upload (a config.json) too.
MAX_FIELD_BYTES = 64 * 1024


@dataclass
class Received(Generic[T]):
    """An upload that arrived whole: what ``check`` made of its fields, and its file in scratch space (the
    caller consumes or deletes it)."""

    checked: T
    path: Path
    filename: str
    sha256: str
    size: int


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


class _Events:
    """The parser's callbacks, queued: they run inside ``parser.write`` (synchronous), the work they call for
    (checks, disk writes) is awaited afterwards."""

    def __init__(self) -> None:
        self.queue: list[tuple[str, Any]] = []
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": lambda: self._headers.clear(),
            "on_header_field": lambda data, start, end: self._grow("_header_name", data[start:end]),
            "on_header_value": lambda data, start, end: self._grow("_header_value", data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": lambda: self.queue.append(("part", dict(self._headers))),
            "on_part_data": lambda data, start, end: self.queue.append(("data", bytes(data[start:end]))),
            "on_part_end": lambda: self.queue.append(("end", None)),
        }

    def _grow(self, attr: str, data: bytes) -> None:
        value = getattr(self, attr) + data
        if len(value) > MAX_FIELD_BYTES:
            raise InvalidRequest("a multipart header is too long", field="file")
        setattr(self, attr, value)

    def _header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = self._header_value = b""


def _part_of(headers: dict[bytes, bytes]) -> _Part:
    _, options = parse_options_header(headers.get(b"content-disposition", b""))
    name = options.get(b"name")
    if name is None:
        raise InvalidRequest("every multipart part needs a Content-Disposition with a name", field="file")
    filename = options.get(b"filename")
    return _Part(name=name.decode("utf-8", "replace"),
                 filename=filename.decode("utf-8", "replace") if filename is not None else None)


class _Sink:
    """The file part on its way to scratch space: written once, hashed as it goes, deleted on any failure."""

    def __init__(self, ctx: AppContext) -> None:
        fd, name = tempfile.mkstemp(dir=ctx.store.scratch_dir(), suffix=".upload")
        self.path = Path(name)
        self._out = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self._pending = bytearray()
        self.size = 0

    async def add(self, data: bytes, limit: int) -> None:
        self.size += len(data)
        if self.size > limit:
            raise PayloadTooLarge(f"upload exceeds {limit} bytes", field="file")
        self._pending += data
        if len(self._pending) >= WRITE_BLOCK:
            await self.flush()

    async def flush(self) -> None:
        block, self._pending = bytes(self._pending), bytearray()
        await anyio.to_thread.run_sync(self._write, block)

    def _write(self, block: bytes) -> None:
        self._hash.update(block)
        self._out.write(block)

    async def close(self) -> str:
        await self.flush()
        self._out.close()
        return self._hash.hexdigest()

    def discard(self) -> None:
        self._out.close()
        self.path.unlink(missing_ok=True)


class _Receiver(Generic[T]):
    """What the parts of one upload made so far: its text fields, its small file parts, and its file."""

    def __init__(self, ctx: AppContext, check: Callable[[dict[str, str], dict[str, bytes], str], T],
                 fields: frozenset[str], file_parts: frozenset[str], file_field: str, max_file_part_bytes: int) -> None:
        self.ctx, self.check = ctx, check
        self.fields, self.file_parts, self.file_field = fields, file_parts, file_field
        self.max_file_part_bytes = max_file_part_bytes
        self.texts: dict[str, str] = {}
        self.small: dict[str, bytes] = {}
        self.part: _Part | None = None
        self.sink: _Sink | None = None
        self.checked: T | None = None
        self.filename = ""

    async def handle(self, kind: str, value: Any) -> None:
        if kind == "part":
            await self._begin(_part_of(value))
        elif kind == "data" and self.part is not None:
            await self._data(self.part, value)
        elif kind == "end" and self.part is not None and self.part.name != self.file_field:
            if self.part.name in self.file_parts:
                self.small[self.part.name] = bytes(self.part.data)
            else:
                self.texts[self.part.name] = self.part.data.decode("utf-8", "replace")

    async def _begin(self, part: _Part) -> None:
        self.part = part
        if self.sink is not None:
            raise InvalidRequest(f"form field {part.name!r} came after the {self.file_field} part: send every "
                                 "field before the file", field=part.name)
        if part.name in self.texts or part.name in self.small:
            raise InvalidRequest(f"form field {part.name!r} is given twice", field=part.name)
        if part.name == self.file_field:
            # Every field is in: check them all before a byte of the file is stored.
            self.filename = part.filename or ""
            self.checked = await anyio.to_thread.run_sync(self.check, self.texts, self.small, self.filename)
            self.sink = _Sink(self.ctx)
        elif part.name not in self.fields | self.file_parts:
            raise InvalidRequest(f"unknown form field {part.name!r}; this upload takes "
                                 f"{sorted(self.fields | self.file_parts | {self.file_field})}", field=part.name)

    async def _data(self, part: _Part, data: bytes) -> None:
        if self.sink is not None:  # the file part: the last one
            await self.sink.add(data, self.ctx.settings.max_upload_bytes)
            return
        part.data += data
        cap = self.max_file_part_bytes if part.name in self.file_parts else MAX_FIELD_BYTES
        if len(part.data) > cap:
            raise PayloadTooLarge(f"{part.name} exceeds {cap} bytes", field=part.name)


async def receive_upload(
    request: Request, ctx: AppContext, caller: Principal, check: Callable[[dict[str, str], dict[str, bytes], str], T],
    *, fields: frozenset[str], file_parts: frozenset[str] = frozenset(), file_field: str = "file",
    max_file_part_bytes: int = MAX_FIELD_BYTES,
) -> Received[T]:
    """Read the multipart body of ``request``. ``fields`` are the text fields allowed, ``file_parts`` the small
    file parts (read into memory, at most ``max_file_part_bytes``), ``file_field`` the upload itself.
    ``check(fields, file_parts, filename)`` runs in a worker thread when the upload's part begins and may raise
    a ServiceError (then nothing was stored); its result comes back in :class:`Received`."""
    content_type = request.headers.get("content-type", "")
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not content_type.lower().startswith("multipart/form-data") or not boundary:
        raise InvalidRequest("send the upload as multipart/form-data", field=file_field)
    events = _Events()
    parser = MultipartParser(boundary, events.callbacks())  # type: ignore[arg-type]
    upload = _Receiver(ctx, check, fields, file_parts, file_field, max_file_part_bytes)
    uncharged = 0
    try:
        async for chunk in request.stream():
            uncharged += len(chunk)
            if uncharged >= CHARGE_STEP:
                await anyio.to_thread.run_sync(charge_upload, ctx, caller, uncharged)
                uncharged = 0
            try:
                parser.write(chunk)
            except FormParserError as exc:
                raise InvalidRequest(f"the multipart body is malformed: {exc}", field=file_field) from exc
            for kind, value in events.queue:
                await upload.handle(kind, value)
            events.queue.clear()
        parser.finalize()
        if upload.sink is None:
            raise InvalidRequest(f"the upload has no {file_field} part", field=file_field)
        if uncharged:
            await anyio.to_thread.run_sync(charge_upload, ctx, caller, uncharged)
        digest = await upload.sink.close()
    except BaseException:
        if upload.sink is not None:
            upload.sink.discard()
        raise
    return Received(checked=upload.checked,  # type: ignore[arg-type]  (set with the sink)
                    path=upload.sink.path, filename=upload.filename, sha256=digest, size=upload.sink.size)


def multipart_body(properties: dict[str, dict[str, Any]], required: list[str]) -> dict[str, Any]:
    """The OpenAPI request body of an upload route (its parameters are read here, not declared to FastAPI),
    properties in the order a client must send them."""
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": properties, "required": required}}}}}
