"""Uploaded ImageFolder datasets: archives unpacked safely into storage, where every worker can read them."""
from __future__ import annotations

import shutil
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import IO

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.context import AppContext
from service.errors import InvalidRequest, NotFound
from service.keys.auth import Principal
from service.models import DatasetRow
from service.ownership import PRIVATE, PUBLIC, can_see, stored_visibility, tombstone_error, visible
from service.settings import Settings
from service.storage import ArtifactStore, sha256_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
#: Unpacked size may be at most this many times the archive (zip bombs).
MAX_EXPANSION = 50
#: A small archive of many tiny images may unpack to more than MAX_EXPANSION times its size; this much is fine.
SMALL_ARCHIVE_ALLOWANCE = 64 * 1024**2
#: Every file costs at least one filesystem block: 100,000 empty files in a 787 KB tar.gz wrote 450 MB.
BLOCK = 4096
#: What Linux filesystems accept: 255 bytes a path component; the whole path kept well under PATH_MAX.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 1024
#: Images larger than this are refused unread (decompression bombs); ImageFolder images are small.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
#: What a corrupt, truncated, encrypted or lying archive raises while it is read.
_ARCHIVE_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError, zlib.error,
                   NotImplementedError, RuntimeError, ValueError)


def get_dataset(session: Session, dataset_id: int, field: str | None = None,
                caller: Principal | None = None, gone: bool = False) -> DatasetRow:
    """The dataset, as far as ``caller`` may see it (another owner's private one is not found, to read or to
    condense from; a deleted one neither, or 410 with its tombstone when ``gone``)."""
    row = session.get(DatasetRow, dataset_id)
    if row is None or not can_see(caller, row.owner, row.visibility):
        raise NotFound(f"dataset {dataset_id} not found", field=field)
    if row.deleted_at is not None:
        raise tombstone_error(f"dataset {dataset_id}", row.deleted_by, row.deleted_at, row.sha256, gone, field)
    return row


def list_page(session: Session, limit: int, after: int | None, caller: Principal | None) -> Sequence[DatasetRow]:
    q = (select(DatasetRow).where(visible(caller, DatasetRow.owner, DatasetRow.visibility),
                                  DatasetRow.deleted_at.is_(None))
         .order_by(DatasetRow.id.desc()).limit(limit + 1))
    if after is not None:
        q = q.where(DatasetRow.id < after)
    return session.scalars(q).all()


def dataset_dir(store: ArtifactStore, sha256: str) -> Path:
    """Where the dataset's archive lies unpacked on this machine (derived data, rebuilt when missing)."""
    return store.local_dir(f"datasets/{sha256}")


def _safe_member(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise InvalidRequest(f"archive member {name!r} escapes the archive", field="file")
    if "\x00" in name or len(name.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES or any(
        len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for part in p.parts
    ):
        raise InvalidRequest(f"archive member {name[:80]!r}... has a name longer than a filesystem allows "
                             f"({MAX_NAME_BYTES} bytes a part, {MAX_PATH_BYTES} in all)", field="file")
    return p


class _Layout:
    """The files and folders an archive makes, so that a member that would be both (``c`` then ``c/1.png``) or
    that comes twice is refused before anything is written over."""

    def __init__(self) -> None:
        self.files: set[PurePosixPath] = set()
        self.dirs: set[PurePosixPath] = set()

    def add(self, rel: PurePosixPath) -> None:
        parents = [p for p in rel.parents if p.parts]
        if rel in self.files or rel in self.dirs or any(p in self.files for p in parents):
            raise InvalidRequest(f"archive member {str(rel)!r} clashes with another member (a file and a folder "
                                 "of one name, or the same name twice)", field="file")
        self.files.add(rel)
        self.dirs.update(parents)


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


def _copy_capped(src: IO[bytes], out: IO[bytes], budget: int) -> int:
    """Copy at most ``budget`` bytes; the bytes actually read count, not the sizes the archive claims."""
    written = 0
    while chunk := src.read(1024 * 1024):
        written += len(chunk)
        if written > budget:
            raise InvalidRequest("archive unpacks to too much data", field="file")
        out.write(chunk)
    return written


def _check_listing(archive: Path, max_files: int, limit_bytes: int) -> list[PurePosixPath]:
    """Every member's path, once names, count and claimed sizes are all within bounds: read before anything is
    written, so that a refused archive leaves nothing behind and costs no disk."""
    layout = _Layout()
    paths: list[PurePosixPath] = []
    total = 0
    for name, size, _ in _members(archive):
        rel = _safe_member(name)
        layout.add(rel)
        paths.append(rel)
        total += max(size, BLOCK)
        if len(paths) > max_files:
            raise InvalidRequest(f"archive has more than {max_files} files", field="file")
        if total > limit_bytes:
            raise InvalidRequest("archive unpacks to too much data", field="file")
    return paths


def unpack(archive: Path, dest: Path, max_files: int, max_bytes: int) -> None:
    """Unpack regular files only (no links, devices or paths outside ``dest``), within caps: ``max_files`` files,
    ``max_bytes`` and at most ``MAX_EXPANSION`` times the archive's size, each file counted as a block at least."""
    limit_bytes = min(max_bytes, max(archive.stat().st_size * MAX_EXPANSION, SMALL_ARCHIVE_ALLOWANCE))
    try:
        members = _check_listing(archive, max_files, limit_bytes)
    except _ARCHIVE_ERRORS as exc:
        raise InvalidRequest(f"the archive cannot be read: {exc}", field="file") from exc
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A folder of its own per unpacking: two processes may unpack the same dataset at once; the first rename wins.
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=dest.name + ".partial-"))
    total = 0
    try:
        try:
            for (_, _, opener), rel in zip(_members(archive), members, strict=True):
                target = tmp.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with opener() as src, open(target, "wb") as out:
                    # The sizes were checked as the archive claims them; a lying archive is stopped here.
                    total += max(_copy_capped(src, out, limit_bytes - total), BLOCK)
        except _ARCHIVE_ERRORS as exc:
            raise InvalidRequest(f"the archive cannot be read: {exc}", field="file") from exc
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


def check_images(root: Path) -> None:
    """Every file named as an image must be one: random bytes named ``.png`` would fail the condensing job
    later, after the upload was accepted."""
    from PIL import Image, UnidentifiedImageError

    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        rel = path.relative_to(root)
        try:
            with Image.open(path) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise InvalidRequest(f"{rel} is {img.width}x{img.height} pixels; at most {MAX_IMAGE_PIXELS}",
                                         field="file")
                img.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            # PIL names the file by its path on this machine: the client knows it by its name in the archive.
            reason = str(exc).replace(str(path), str(rel))
            raise InvalidRequest(f"{rel} is not a readable image: {reason}", field="file") from exc


#: The upload's text fields, in the order the OpenAPI document lists them.
UPLOAD_FIELDS = ("name", "visibility")


def check_upload_form(fields: dict[str, str], parts: dict[str, bytes], filename: str) -> tuple[str, str]:
    """(name, visibility) of an upload, checked before its archive is stored."""
    name, visibility = fields.get("name", ""), fields.get("visibility") or PRIVATE
    if len(name) > 200:
        raise InvalidRequest("name may have at most 200 characters", field="name")
    if visibility not in (PUBLIC, PRIVATE):
        raise InvalidRequest("visibility is public or private", field="visibility")
    return name, visibility


def register_upload(session: Session, ctx: AppContext, archive: Path, name: str, owner: str | None = None,
                    visibility: str = "private", sha256: str | None = None) -> DatasetRow:
    """Validate and unpack ``archive`` (consumed; ``sha256`` its digest when the caller has it), then store it and
    add the row; on error nothing stays."""
    created: Path | None = None
    visibility = stored_visibility(owner, visibility)
    try:
        digest = sha256 or sha256_file(archive)
        # The same archive uploaded again by the same owner, as public or private again, is the same dataset;
        # another owner gets a row of their own (datasets belong to their owner), sharing the unpacked files.
        same_owner = DatasetRow.owner == owner if owner is not None else DatasetRow.owner.is_(None)
        existing = session.scalar(select(DatasetRow).where(DatasetRow.sha256 == digest, same_owner,
                                                           DatasetRow.visibility == visibility,
                                                           DatasetRow.deleted_at.is_(None)))
        if existing is not None:
            return existing
        dest = dataset_dir(ctx.store, digest)
        if not dest.exists():
            unpack(archive, dest, ctx.settings.dataset_max_files, ctx.settings.dataset_max_bytes)
            created = dest
            check_images(dest)
        num_classes, num_images = count_images(image_folder_root(dest))
        if num_classes < 2:
            raise InvalidRequest("an ImageFolder needs at least two class folders with images", field="file")
        stored = ctx.store.put_file(archive, move=True, sha256=digest)
        row = DatasetRow(
            name=name, uri=f"dataset:pending-{digest[:12]}", num_classes=num_classes, num_images=num_images,
            sha256=digest, size_bytes=stored.size, storage_key=stored.key, owner=owner, visibility=visibility,
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


def resolve_path(store: ArtifactStore, settings: Settings, row: DatasetRow) -> Path:
    """The ImageFolder root of an uploaded dataset, unpacked from its stored archive first on a machine that has
    not unpacked it yet (a worker elsewhere, or after the folder was cleaned)."""
    dest = dataset_dir(store, row.sha256)
    if not dest.is_dir():
        archive = store.local_path(row.storage_key)
        unpack(archive, dest, settings.dataset_max_files, settings.dataset_max_bytes)
    return image_folder_root(dest)
