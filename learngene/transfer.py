"""Resumable, verified downloads of immutable blobs (the service's ETag is the blob's sha256).

A download writes ``<name>.incomplete`` next to the target and renames it only once its sha256 matches, so the
target is never a torn file. An interrupted download resumes with ``Range`` + ``If-Range`` (the server answers
200 with the whole file if the blob behind the URL changed). A partial file whose bytes were damaged is caught
by the final sha256 check: it is discarded and fetched once more from the start.
"""
from __future__ import annotations

import hashlib
import os
import queue
import threading
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from learngene import bars
from learngene.errors import ChecksumMismatch, ConnectionFailed, error_for

#: Bytes read from a local file per hash update (large reads keep hashing at memory speed).
READ_CHUNK = 4 * 1024 * 1024


def sha256_file(path: Path, limit: int | None = None) -> tuple[str, "hashlib._Hash"]:
    """Hex digest of the first ``limit`` bytes (all when None), and the hasher to continue from there."""
    hasher = hashlib.sha256()
    left = limit
    with open(path, "rb") as f:
        while left is None or left > 0:
            block = f.read(READ_CHUNK if left is None else min(READ_CHUNK, left))
            if not block:
                break
            hasher.update(block)
            if left is not None:
                left -= len(block)
    return hasher.hexdigest(), hasher


def incomplete_path(target: Path) -> Path:
    return target.with_name(target.name + ".incomplete")


def fetch_blob(http: httpx.Client, url: str, target: Path, sha256: str, size: int | None, *,
               show_progress: bool) -> tuple[int, int, bool]:
    """Make ``target`` hold the blob. Returns (bytes fetched now, bytes of a partial file kept, whether a
    corrupt partial was discarded). A file already there with the right sha256 costs no request at all."""
    if target.exists() and (size is None or target.stat().st_size == size) and sha256_file(target)[0] == sha256:
        return 0, 0, False
    part = incomplete_path(target)
    fetched = 0
    for attempt in range(2):
        kept = part.stat().st_size if part.exists() else 0
        if size is not None and kept > size:
            kept = 0
        got, digest, kept = _fetch(http, url, part, sha256, size, kept, show_progress)
        fetched += got
        if digest == sha256:
            os.replace(part, target)
            return fetched, kept, attempt > 0
        part.unlink(missing_ok=True)
        if not kept:  # the server's own bytes do not match its ETag: fetching again would not help
            break
    raise ChecksumMismatch(f"{url}: sha256 of the downloaded bytes is not {sha256}")


def _fetch(http: httpx.Client, url: str, part: Path, sha256: str, size: int | None, kept: int,
           show_progress: bool) -> tuple[int, str, int]:
    """One GET (ranged when ``kept`` bytes are already there). Returns (bytes received, sha256 of the whole
    partial file afterwards, bytes of the earlier partial that were kept)."""
    if kept and kept == size:  # complete already, only the check and rename were missed
        return 0, sha256_file(part)[0], kept
    headers = {"range": f"bytes={kept}-", "if-range": f'"{sha256}"'} if kept else {}
    received = 0
    try:
        with http.stream("GET", url, headers=headers) as r:
            if r.is_error:
                r.read()
                raise error_for(r.status_code, _json(r), r.headers)
            if r.status_code == 206:
                hasher = sha256_file(part, kept)[1]
                mode = "ab"
            else:  # 200: the whole blob (no partial, or If-Range did not match)
                kept, hasher, mode = 0, hashlib.sha256(), "wb"
            total = size if size is not None else _length(r, kept)
            with open(part, mode) as out, _Sink(out, hasher) as sink, \
                    bars.transfer(part.name.removesuffix(".incomplete"), total, kept, show_progress) as advance:
                for chunk in r.iter_raw():
                    sink.put(chunk)
                    received += len(chunk)
                    advance(len(chunk))
    except httpx.TransportError as exc:
        raise ConnectionFailed(f"download of {url} broke after {received} bytes ({exc}); run it again to resume "
                               f"from {part}") from exc
    return received, hasher.hexdigest(), kept


class _Sink:
    """Writes and hashes received bytes on a thread of its own, in 1 MiB batches, so that hashing (as slow as
    loopback itself: 0.2 s for 88 MB) overlaps the network instead of following it; hashlib and file writes
    release the GIL. Leaving the block waits until everything received is written and hashed."""

    BATCH = 1 << 20

    def __init__(self, out: BinaryIO, hasher: Any) -> None:
        self.out, self.hasher = out, hasher
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._drain, name="lg-download-sink", daemon=True)

    def __enter__(self) -> "_Sink":
        self.thread.start()
        return self

    def put(self, chunk: bytes) -> None:
        self.pending.append(chunk)
        self.pending_bytes += len(chunk)
        if self.pending_bytes >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        if self.error is not None:
            raise self.error
        if self.pending:
            self.queue.put(b"".join(self.pending))
            self.pending, self.pending_bytes = [], 0

    def _drain(self) -> None:
        while (block := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.out.write(block)
                    self.hasher.update(block)
                except BaseException as exc:  # handed to the receiving thread, which stops
                    self.error = exc

    def __exit__(self, *exc: object) -> None:
        # What arrived before an interruption is written too: it is what a resume keeps.
        try:
            self._flush()
        finally:
            self.queue.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error


def _length(r: httpx.Response, kept: int) -> int | None:
    length = r.headers.get("content-length")
    return int(length) + kept if length else None


def _json(r: httpx.Response) -> object:
    try:
        return r.json()
    except ValueError:
        return None
