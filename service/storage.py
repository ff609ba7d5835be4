"""Artifact storage: content-addressed blobs (keyed by sha256) plus a few named, overwritable blobs
(job checkpoints). One small interface; the local-folder backend writes atomically (temp file + rename)."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredObject:
    key: str
    sha256: str
    size: int


class ArtifactStore(Protocol):
    def put_file(self, src: Path, *, move: bool = False, sha256: str | None = None) -> StoredObject: ...
    def put_bytes(self, data: bytes) -> StoredObject: ...
    def open(self, key: str) -> BinaryIO: ...
    def local_path(self, key: str) -> Path | None: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def put_named(self, name: str, data: bytes) -> str: ...
    def get_named(self, name: str) -> bytes | None: ...
    def delete(self, key: str) -> None: ...
    def ping(self) -> None: ...
    def scratch_dir(self) -> Path: ...


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def content_key(sha256: str) -> str:
    return f"sha256/{sha256[:2]}/{sha256}"


class LocalArtifactStore:
    """A folder. Keys are relative paths below it; nothing outside it is ever touched."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"storage key escapes the store: {key!r}")
        return path

    def scratch_dir(self) -> Path:
        """Temp files live on the store's filesystem so that publishing them is a rename, not a copy."""
        return self.root / "tmp"

    def _publish(self, tmp: Path, key: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)

    def put_file(self, src: Path, *, move: bool = False, sha256: str | None = None) -> StoredObject:
        """Store ``src`` under its content key. ``sha256`` is the caller's digest of ``src`` when it already has
        one (the engine's safetensors writer hashes while it writes); without it the file is read once to hash it."""
        digest = sha256 or sha256_file(src)
        key = content_key(digest)
        size = src.stat().st_size
        if self.exists(key):
            if move:
                src.unlink()
            return StoredObject(key, digest, size)
        if move and src.parent.resolve() == self.scratch_dir().resolve():
            self._publish(src, key)
        else:
            fd, tmp = tempfile.mkstemp(dir=self.scratch_dir())
            with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                shutil.copyfileobj(inp, out, CHUNK)
                out.flush()
                os.fsync(out.fileno())
            self._publish(Path(tmp), key)
            if move:
                src.unlink()
        return StoredObject(key, digest, size)

    def put_bytes(self, data: bytes) -> StoredObject:
        fd, tmp = tempfile.mkstemp(dir=self.scratch_dir())
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        return self.put_file(Path(tmp), move=True)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def put_named(self, name: str, data: bytes) -> str:
        key = f"named/{name}"
        fd, tmp = tempfile.mkstemp(dir=self.scratch_dir())
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        self._publish(Path(tmp), key)
        return key

    def get_named(self, name: str) -> bytes | None:
        path = self._path(f"named/{name}")
        return path.read_bytes() if path.is_file() else None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def ping(self) -> None:
        probe = self.scratch_dir() / ".ping"
        probe.write_bytes(b"ok")
        probe.unlink()


def iter_file(fileobj: BinaryIO, start: int = 0, length: int | None = None) -> Iterator[bytes]:
    """Stream ``length`` bytes from ``start`` in chunks, closing the file at the end."""
    try:
        fileobj.seek(start)
        remaining = length
        while remaining is None or remaining > 0:
            chunk = fileobj.read(CHUNK if remaining is None else min(CHUNK, remaining))
            if not chunk:
                break
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk
    finally:
        fileobj.close()
