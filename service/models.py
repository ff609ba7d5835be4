"""The registry: typed SQLAlchemy 2 models. Migrations in ``migrations/`` create exactly these tables."""
from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC on the way out, whatever the backend stores (SQLite keeps naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


class Ancestry(Base):
    """An uploaded (or seeded) source model: a timm architecture plus its weights in storage."""

    __tablename__ = "ancestries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    architecture: Mapped[str] = mapped_column(String(200))
    model_args: Mapped[dict[str, Any]]
    #: The ViTSpec the engine derived from the architecture and model_args.
    spec: Mapped[dict[str, Any]]
    param_count: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(300))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: The API key owner who uploaded it (None: seeded, or uploaded while keys were not required).
    owner: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: The ViT family (``ViTSpec.family``): vit, deit, deit-distilled, dinov2, clip.
    family: Mapped[str] = mapped_column(String(40), default="vit", server_default="vit")
    #: Input mean, std, interpolation and crop: the architecture's pretrained_cfg, or given at upload.
    preprocessing: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    #: The Hugging Face ``model_type`` the upload was converted from (the stored file is in timm's layout).
    converted_from: Mapped[str | None] = mapped_column(String(40), nullable=True)
    #: sha256 of the uploaded file's sha256 and the upload's arguments: the same upload finds this row again.
    upload_key: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    #: public or private (``service.ownership``): a private ancestry exists only for its owner and admins.
    visibility: Mapped[str] = mapped_column(String(10), default="private", server_default="public")
    #: Deleted (``service/lifecycle.py``): the row stays as a tombstone (who, when, its sha256) so that lineage that
    #: names it stays readable and its id is never given to another; its blob is gone.
    deleted_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    deleted_by: Mapped[str | None] = mapped_column(String(100), nullable=True)


class LearngeneRow(Base):
    __tablename__ = "learngenes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    method: Mapped[str] = mapped_column(String(40))
    #: Architecture family of every version (``vit`` for now).
    family: Mapped[str] = mapped_column(String(40), default="vit")
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: Its first publisher: only they (and admins) publish versions and move its aliases.
    owner: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    #: public or private (``service.ownership``).
    visibility: Mapped[str] = mapped_column(String(10), default="private", server_default="public")
    #: A deleted learngene keeps its row, so that its name stays its owner's and its version numbers are never reused.
    deleted_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    deleted_by: Mapped[str | None] = mapped_column(String(100), nullable=True)

    versions: Mapped[list[LearngeneVersion]] = relationship(
        back_populates="learngene", order_by="LearngeneVersion.version"
    )
    aliases: Mapped[list[LearngeneAlias]] = relationship(back_populates="learngene")


class LearngeneVersion(Base):
    __tablename__ = "learngene_versions"
    __table_args__ = (UniqueConstraint("learngene_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    learngene_id: Mapped[int] = mapped_column(ForeignKey("learngenes.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(40))
    ancestry_id: Mapped[int | None] = mapped_column(ForeignKey("ancestries.id"), nullable=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    dataset: Mapped[str | None] = mapped_column(String(500), nullable=True)
    mode: Mapped[str | None] = mapped_column(String(20), nullable=True)
    hyperparams: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: The learngene's own description for the engine (base spec, tile sizes, indices...).
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    storage_key: Mapped[str | None] = mapped_column(String(300), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: Deleted (``service/lifecycle.py``): the row stays as a tombstone (who, when, its sha256) so that lineage that
    #: names it stays readable and its id is never given to another; its blob is gone.
    deleted_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    deleted_by: Mapped[str | None] = mapped_column(String(100), nullable=True)

    learngene: Mapped[LearngeneRow] = relationship(back_populates="versions")
    ancestry: Mapped[Ancestry | None] = relationship()


class LearngeneAlias(Base):
    __tablename__ = "learngene_aliases"

    learngene_id: Mapped[int] = mapped_column(
        ForeignKey("learngenes.id", ondelete="CASCADE"), primary_key=True
    )
    alias: Mapped[str] = mapped_column(String(60), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("learngene_versions.id", ondelete="CASCADE"))

    learngene: Mapped[LearngeneRow] = relationship(back_populates="aliases")
    version: Mapped[LearngeneVersion] = relationship()


class DescendantRow(Base):
    __tablename__ = "descendants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: (source, method, resolved spec, seed) canonically hashed: one row per distinct request.
    cache_key: Mapped[str] = mapped_column(String(64), unique=True)
    learngene_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("learngene_versions.id"), nullable=True, index=True
    )
    ancestry_id: Mapped[int | None] = mapped_column(ForeignKey("ancestries.id"), nullable=True)
    method: Mapped[str] = mapped_column(String(40))
    spec: Mapped[dict[str, Any]]
    seed: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    #: The job that produces it (the latest one); its ending settles ``status``.
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), nullable=True, index=True)
    param_count: Mapped[int] = mapped_column(BigInteger)
    gflops: Mapped[float] = mapped_column(Float)
    architecture: Mapped[str | None] = mapped_column(String(200), nullable=True)
    config: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    storage_key: Mapped[str | None] = mapped_column(String(300), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: Who asked for it first (identical requests share the row); it, the source's owner and admins delete it.
    owner: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    #: A pinned descendant's weights are never evicted from the descendant cache.
    pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: Last request, download or read of it: the descendant cache evicts the least recently used first.
    last_used_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    #: Deleted (``service/lifecycle.py``): the row stays as a tombstone (who, when, its sha256) so that lineage that
    #: names it stays readable and its id is never given to another; its blob is gone.
    deleted_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    deleted_by: Mapped[str | None] = mapped_column(String(100), nullable=True)


def new_job_id() -> str:
    return uuid.uuid4().hex


class Job(Base):
    """The truth about a unit of background work; the broker only carries its id."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_job_id)
    kind: Mapped[str] = mapped_column(String(30))
    queue: Mapped[str] = mapped_column(String(10))
    #: queued, running, succeeded, failed, cancelled.
    state: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: A message for people; tracebacks go to the log of the process that ran the job.
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: A stable code for programs (``service.jobs.states.ERROR_*``).
    error_code: Mapped[str | None] = mapped_column(String(40), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: Who asked for the work (an API key's owner; None: anonymous or internal). Quotas count by it.
    owner: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: When its message was last handed to the broker: a job queued long after that is published again.
    published_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    #: The daily quota this job's bytes were charged to (``Principal.bucket``; None: nothing charged).
    quota_bucket: Mapped[str | None] = mapped_column(String(100), nullable=True)
    #: What it charged (an expansion: its descendant's float32 bytes). Given back by failing or being cancelled:
    #: the quota counts the bucket's jobs of the day that did neither (``service.limits.quotas``).
    charged_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (Index("ix_jobs_quota_bucket_created_at", "quota_bucket", "created_at"),)


class JobEvent(Base):
    """Append-only progress log of a job: what the live event stream and the loss curve read."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DatasetRow(Base):
    """An uploaded ImageFolder archive, unpacked into storage for workers to read."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    uri: Mapped[str] = mapped_column(String(500), unique=True)
    num_classes: Mapped[int] = mapped_column(Integer)
    num_images: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(300))
    owner: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: public or private (``service.ownership``).
    visibility: Mapped[str] = mapped_column(String(10), default="private", server_default="public")
    #: Deleted (``service/lifecycle.py``): the row stays as a tombstone (who, when, its sha256) so that lineage that
    #: names it stays readable and its id is never given to another; its blob is gone.
    deleted_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    deleted_by: Mapped[str | None] = mapped_column(String(100), nullable=True)


class ApiKey(Base):
    """A client's key. Only its sha256 is stored: the key itself is shown once, when it is created."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The key's first characters, so that people can tell keys apart in listings and logs.
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    owner: Mapped[str] = mapped_column(String(100), index=True)
    #: Comma-separated, from read, write, admin.
    scopes: Mapped[str] = mapped_column(String(100))
    #: Per-key limits; None means the configured default (LEARNGENE_RATE_LIMIT_PER_S and friends).
    rate_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    burst: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_concurrent_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    descendant_bytes_per_day: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    upload_bytes_per_day: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
