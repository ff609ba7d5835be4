"""Uploaded ImageFolder datasets: archives unpacked safely into storage, where every worker can read them."""
from __future__ import annotations

import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import IO

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.context import AppContext
from service.errors import InvalidRequest, NotFound
from service.models import Dataset
from service.storage import sha256_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_MEMBERS = 200_000
#: Unpacked size may be at most this many times the archive (zip bombs).
MAX_EXPANSION = 50


def get_dataset(session: Session, dataset_id: int, field: str | None = None) -> Dataset:
    row = session.get(Dataset, dataset_id)
    if row is None:
        raise NotFound(f"dataset {dataset_id} not found", field=field)
    return row


def list_page(session: Session, limit: int, after: int | None) -> Sequence[Dataset]:
    q = select(Dataset).order_by(Dataset.id.desc()).limit(limit + 1)
    if after is not None:
        q = q.where(Dataset.id < after)
    return session.scalars(q).all()


def dataset_dir(ctx: AppContext, sha256: str) -> Path:
    """Where the dataset's archive lies unpacked on this machine (derived data, rebuilt when missing)."""
    return ctx.store.local_dir(f"datasets/{sha256}")


def _safe_member(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise InvalidRequest(f"archive member {name!r} escapes the archive", field="file")
    return p


def _members(archive: Path) -> Iterator[tuple[str, int, Callable[[], IO[bytes]]]]:
    """(name, size, opener) of every regular file of a zip or tar; refuses links and special files."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield info.filename, info.file_size, lambda info=info: zf.open(info)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for member in tf:
                if member.isdir():
                    continue
                if not member.isfile():
                    raise InvalidRequest(f"archive member {member.name!r} is not a regular file", field="file")
                yield member.name, member.size, lambda member=member: tf.extractfile(member)  # type: ignore[return-value]
    else:
        raise InvalidRequest("dataset upload must be a .zip or .tar(.gz) archive", field="file")


def unpack(archive: Path, dest: Path) -> None:
    """Unpack regular files only (no links, devices or paths outside ``dest``), within size and count caps (at
    most ``MAX_EXPANSION`` times the archive's size)."""
    limit_bytes = max(archive.stat().st_size, 1) * MAX_EXPANSION
    total = count = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A folder of its own per unpacking: two processes may unpack the same dataset at once; the first rename wins.
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=dest.name + ".partial-"))
    try:
        for name, size, opener in _members(archive):
            rel = _safe_member(name)
            count += 1
            total += size
            if count > MAX_MEMBERS:
                raise InvalidRequest(f"archive has more than {MAX_MEMBERS} files", field="file")
            if total > limit_bytes:
                raise InvalidRequest("archive unpacks to too much data", field="file")
            target = tmp.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with opener() as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
        try:
            tmp.rename(dest)
        except OSError:
            if not dest.is_dir():
                raise
            shutil.rmtree(tmp)  # someone else finished first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def image_folder_root(root: Path) -> Path:
    """The folder whose subfolders are the classes (an archive may wrap everything in one top folder)."""
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and not any(
        f.suffix.lower() in IMAGE_SUFFIXES for f in entries[0].iterdir() if f.is_file()
    ):
        return entries[0]
    return root


def count_images(root: Path) -> tuple[int, int]:
    classes = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    counts = [sum(1 for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES) for d in classes]
    return len([c for c in counts if c]), sum(counts)


def register_upload(session: Session, ctx: AppContext, archive: Path, name: str) -> Dataset:
    """Validate and unpack ``archive`` (consumed), then store it and add the row; on error nothing stays."""
    created: Path | None = None
    try:
        digest = sha256_file(archive)
        existing = session.scalar(select(Dataset).where(Dataset.sha256 == digest))
        if existing is not None:
            return existing
        dest = dataset_dir(ctx, digest)
        if not dest.exists():
            unpack(archive, dest)
            created = dest
        num_classes, num_images = count_images(image_folder_root(dest))
        if num_classes < 2:
            raise InvalidRequest("an ImageFolder needs at least two class folders with images", field="file")
        stored = ctx.store.put_file(archive, move=True)
        row = Dataset(
            name=name, uri=f"dataset:pending-{digest[:12]}", num_classes=num_classes, num_images=num_images,
            sha256=digest, size_bytes=stored.size, storage_key=stored.key,
        )
        session.add(row)
        session.flush()
        row.uri = f"dataset:{row.id}"
        created = None
        return row
    finally:
        archive.unlink(missing_ok=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)


def resolve_path(ctx: AppContext, row: Dataset) -> Path:
    """The ImageFolder root of an uploaded dataset, unpacked from its stored archive first on a machine that has
    not unpacked it yet (a worker elsewhere, or after the folder was cleaned)."""
    dest = dataset_dir(ctx, row.sha256)
    if not dest.is_dir():
        archive = ctx.store.local_path(row.storage_key)
        unpack(archive, dest)
    return image_folder_root(dest)
