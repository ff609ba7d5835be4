"""Artifact storage: content-addressed blobs (keyed by sha256) plus a few named, overwritable blobs
(job checkpoints). One small interface, two backends:

- :class:`LocalArtifactStore`, a folder (the embedded default, or a volume shared by API and workers); writes are
  atomic (temp file + rename).
- :class:`S3ArtifactStore`, a bucket of any S3-compatible store (AWS S3, MinIO, Ceph...), the source of truth
  shared by API and workers on many machines. Each process keeps a read-through cache of the content-addressed
  blobs it has written or read, so serving (ranges, ETags) and loading work on local files; a blob fetched into
  the cache is checked against its sha256 key before it is used.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import BinaryIO, Protocol

from service.metrics import CACHE
from service.settings import Settings

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredObject:
    key: str
    sha256: str
    size: int


@dataclass(frozen=True)
class BlobInfo:
    """A content-addressed blob as listed by the store: its key, size and when it was last written (UTC epoch s)."""

    key: str
    size: int
    modified: float


class ArtifactStore(Protocol):
    def put_file(self, src: Path, *, move: bool = False, sha256: str | None = None) -> StoredObject: ...
    def put_bytes(self, data: bytes) -> StoredObject: ...
    def open(self, key: str) -> BinaryIO: ...
    def local_path(self, key: str) -> Path: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def put_named(self, name: str, data: bytes) -> str: ...
    def get_named(self, name: str) -> bytes | None: ...
    def delete_named(self, name: str) -> None: ...
    def delete(self, key: str) -> None: ...
    def blobs(self) -> Iterator[BlobInfo]: ...
    def ping(self) -> None: ...
    def scratch_dir(self) -> Path: ...
    def local_dir(self, name: str) -> Path: ...


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

    def local_dir(self, name: str) -> Path:
        """A folder for data derived from blobs and rebuilt from them when missing (unpacked datasets)."""
        return self._path(name)

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
            # Used again: garbage collection's grace period counts from now (a row naming it is about to commit).
            os.utime(self._path(key))
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

    def local_path(self, key: str) -> Path:
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

    def delete_named(self, name: str) -> None:
        self.delete(f"named/{name}")

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def blobs(self) -> Iterator[BlobInfo]:
        """Every content-addressed blob (not the named ones, scratch files or unpacked datasets)."""
        for path in sorted((self.root / "sha256").glob("*/*")):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            yield BlobInfo(f"sha256/{path.parent.name}/{path.name}", st.st_size, st.st_mtime)

    def ping(self) -> None:
        probe = self.scratch_dir() / ".ping"
        probe.write_bytes(b"ok")
        probe.unlink()


class S3ArtifactStore:
    """An S3-compatible bucket, under an optional key prefix, with a local cache folder."""

    def __init__(self, bucket: str, prefix: str, cache_dir: Path, *, endpoint_url: str | None = None,
                 region: str | None = None, cache_max_bytes: int = 0, keep_recent_s: float = 600.0) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.cache = LocalArtifactStore(cache_dir)
        self.cache_max_bytes = cache_max_bytes  # 0: unbounded
        self.keep_recent_s = keep_recent_s
        self._prune_lock = threading.Lock()
        addressing = {"addressing_style": "path"} if endpoint_url else {}
        self._client = boto3.client(  # boto3 clients are thread-safe; one per store
            "s3", endpoint_url=endpoint_url or None, region_name=region or "us-east-1",
            config=Config(s3=addressing, retries={"max_attempts": 5, "mode": "standard"}),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _missing(self, exc: Exception) -> bool:
        from botocore.exceptions import ClientError

        return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in (
            "404", "NoSuchKey", "NotFound")

    def _head(self, key: str) -> dict[str, object] | None:
        try:
            return self._client.head_object(Bucket=self.bucket, Key=self._key(key))  # type: ignore[no-any-return]
        except Exception as exc:
            if self._missing(exc):
                return None
            raise

    def ensure_bucket(self) -> None:
        """Create the bucket when it is not there (MinIO in docker compose starts empty)."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            if not self._missing(exc):
                raise
            self._client.create_bucket(Bucket=self.bucket)

    def put_file(self, src: Path, *, move: bool = False, sha256: str | None = None) -> StoredObject:
        digest = sha256 or sha256_file(src)
        key = content_key(digest)
        size = src.stat().st_size
        if self._head(key) is None:
            self._client.upload_file(str(src), self.bucket, self._key(key))  # multipart for large files
        # The writer will likely read it again (the API serves what its in-process worker wrote): keep it.
        self.cache.put_file(src, move=move, sha256=digest)
        self._used(self.cache.local_path(key))
        self.prune()
        return StoredObject(key, digest, size)

    def _used(self, path: Path) -> None:
        """The cache's LRU clock is each blob's mtime, set on every use (atime is unreliable under relatime)."""
        try:
            os.utime(path)
        except FileNotFoundError:
            pass

    def prune(self) -> int:
        """Delete the least recently used cached blobs until the cache holds at most ``cache_max_bytes``; blobs
        used in the last ``keep_recent_s`` seconds stay (a request or job may be about to open them), even if
        the cache stays over its bound. Returns the bytes freed. Everything deleted is still in the bucket."""
        if not self.cache_max_bytes:
            return 0
        with self._prune_lock:
            blobs = []
            for path in (self.cache.root / "sha256").glob("*/*"):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                blobs.append((st.st_mtime, st.st_size, path))
            total = sum(size for _, size, _ in blobs)
            freed = 0
            cutoff = time.time() - self.keep_recent_s
            for mtime, size, path in sorted(blobs):
                if total - freed <= self.cache_max_bytes or mtime > cutoff:
                    break
                path.unlink(missing_ok=True)
                freed += size
            return freed

    def put_bytes(self, data: bytes) -> StoredObject:
        cached = self.cache.put_bytes(data)  # written once, into the cache, then uploaded from there
        return self.put_file(self.cache.local_path(cached.key), sha256=cached.sha256)

    def local_path(self, key: str) -> Path:
        """The cached copy of a blob, fetched first when this process has not seen it."""
        path = self.cache.local_path(key)
        if path.is_file():
            self._used(path)
            CACHE.labels("artifacts", "hit").inc()
            return path
        CACHE.labels("artifacts", "miss").inc()
        fd, tmp_name = tempfile.mkstemp(dir=self.scratch_dir())
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            try:
                self._client.download_file(self.bucket, self._key(key), str(tmp))
            except Exception as exc:
                if self._missing(exc):
                    raise FileNotFoundError(f"no blob {key!r} in s3://{self.bucket}/{self.prefix}") from exc
                raise
            if key.startswith("sha256/") and sha256_file(tmp) != key.rsplit("/", 1)[-1]:
                raise OSError(f"blob {key!r} from s3://{self.bucket} does not match its sha256")
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.prune()
        return path

    def open(self, key: str) -> BinaryIO:
        return open(self.local_path(key), "rb")

    def exists(self, key: str) -> bool:
        return self.cache.exists(key) or self._head(key) is not None

    def size(self, key: str) -> int:
        if self.cache.exists(key):
            return self.cache.size(key)
        head = self._head(key)
        if head is None:
            raise FileNotFoundError(key)
        return int(head["ContentLength"])  # type: ignore[call-overload]

    def put_named(self, name: str, data: bytes) -> str:
        key = f"named/{name}"
        self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        return key

    def get_named(self, name: str) -> bytes | None:
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=self._key(f"named/{name}"))["Body"]
        except Exception as exc:
            if self._missing(exc):
                return None
            raise
        with body:
            return body.read()  # type: ignore[no-any-return]

    def delete_named(self, name: str) -> None:
        self.delete(f"named/{name}")

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        self.cache.delete(key)

    def blobs(self) -> Iterator[BlobInfo]:
        """Every content-addressed blob in the bucket (under the prefix), listed page by page."""
        start = self._key("sha256/")
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
            for obj in page.get("Contents", []):
                key = obj["Key"][len(self._key("")):] if self.prefix else obj["Key"]
                yield BlobInfo(key, int(obj["Size"]), obj["LastModified"].timestamp())

    def ping(self) -> None:
        self._client.head_bucket(Bucket=self.bucket)
        self.cache.ping()

    def scratch_dir(self) -> Path:
        return self.cache.scratch_dir()

    def local_dir(self, name: str) -> Path:
        return self.cache.local_dir(name)


def make_store(settings: Settings) -> ArtifactStore:
    """The store ``LEARNGENE_STORAGE_URL`` names (already validated by :class:`Settings`): the default folder, a
    ``file://`` folder, or an ``s3://bucket[/prefix]`` with this process's cache."""
    if not settings.storage_url.startswith("s3://"):
        return LocalArtifactStore(settings.artifact_root)
    bucket, _, prefix = settings.storage_url.removeprefix("s3://").partition("/")
    return S3ArtifactStore(bucket, prefix, settings.resolved_cache_dir,
                           endpoint_url=settings.s3_endpoint_url or None, region=settings.s3_region or None,
                           cache_max_bytes=settings.cache_max_bytes)
