"""All configuration, from environment variables prefixed ``LEARNGENE_``, validated once at start."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEARNGENE_", env_file=None, extra="ignore")

    environment: Literal["development", "production"] = "development"
    #: Everything of the embedded default lives here: the SQLite registry and the artifact folder.
    data_dir: Path = Path(".learngene")
    #: SQLAlchemy URL; empty means ``sqlite:///<data_dir>/registry.db``.
    database_url: str = ""
    #: Celery broker (``redis://...``); empty means jobs run in an in-process worker thread pool.
    broker_url: str = ""
    #: ``file:///abs/path`` or ``s3://bucket[/prefix]``; empty means ``<data_dir>/artifacts``. S3 credentials come
    #: from the usual ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or any other source boto3 reads).
    storage_url: str = ""
    #: S3-compatible endpoint (MinIO, Ceph...); empty means AWS itself.
    s3_endpoint_url: str = ""
    s3_region: str = ""
    #: With S3 storage, where this process caches the blobs it writes and reads; empty means ``<data_dir>/cache``.
    cache_dir: Path | None = None
    #: With S3 storage, the most the cache keeps (least recently used blobs go first; 0: no bound).
    cache_max_bytes: int = Field(0, ge=0)
    #: The bootstrap admin key. When it is set, or once any API key exists, every write (uploads, jobs, producing
    #: a descendant, /hub included) needs ``Authorization: Bearer <key>``.
    api_token: str = ""
    #: Reads of the registry need a key with the read scope too (default: the public registry is open).
    require_key_for_reads: bool = False

    # --- rate limits and quotas (per key; defaults for keys that set none; anonymous callers share one bucket) ---
    rate_limit_per_s: float = Field(50.0, gt=0)
    rate_limit_burst: int = Field(100, ge=1)
    anonymous_rate_per_s: float = Field(20.0, gt=0)
    anonymous_burst: int = Field(50, ge=1)
    #: Queued plus running jobs one owner may have (anonymous callers count as one owner).
    max_concurrent_jobs: int = Field(8, ge=1)
    #: Bytes of new descendants (estimated from their parameter count at request time) per owner and UTC day.
    descendant_bytes_per_day: int = Field(200 * 1024**3, ge=1)
    #: Bytes of uploads (ancestries and datasets) per owner and UTC day.
    upload_bytes_per_day: int = Field(20 * 1024**3, ge=1)
    #: The largest request body of every route that is not an upload (JSON bodies).
    max_body_bytes: int = Field(1024**2, ge=1024)
    #: Longest a job's event stream stays open, whatever ``timeout_s`` asks: an open stream holds a connection.
    max_event_stream_s: float = Field(3600.0, gt=0)

    # --- jobs --------------------------------------------------------------------------------------
    inprocess_workers: int = Field(2, ge=1, le=32)
    #: torch intra-op threads in a process that runs jobs; 0 = automatic: the cores shared out among the
    #: in-process job threads (embedded default), torch's own default in a Celery worker. Small models on a
    #: small machine run several times faster without threads fighting over cores.
    torch_threads: int = Field(0, ge=0, le=256)
    heartbeat_interval_s: float = Field(2.0, gt=0)
    #: A running job whose heartbeat is older than this is considered orphaned and is requeued.
    stale_after_s: float = Field(30.0, gt=0)
    #: Longest a job may take; the broker's visibility timeout is set above it so a long job is never
    #: redelivered while its worker is alive.
    max_job_seconds: int = Field(6 * 3600, gt=0)
    max_attempts: int = Field(3, ge=1)
    #: A job still queued this long after its message was published is published again (the broker may have
    #: lost it); the wait doubles for each further publication.
    republish_after_s: float = Field(60.0, gt=0)
    checkpoint_every_s: float = Field(120.0, gt=0)

    # --- registry lifecycle ---------------------------------------------------------------------------
    #: The most bytes of descendant weights kept in storage (0: no bound). Descendants are deterministic, so past
    #: it the least recently used unpinned ones lose their weights (the row stays) and are made again, checked
    #: against their recorded sha256, when next asked for.
    descendant_cache_bytes: int = Field(0, ge=0)
    #: Blobs in storage that no row names (left by a crash between writing a blob and committing its row) are
    #: removed by the sweeper once they are this old: younger ones may belong to a row about to commit.
    gc_grace_s: float = Field(6 * 3600.0, ge=0)
    #: How often the sweeper looks for such blobs (listing a bucket is not free); 0: never (``learngene gc``).
    gc_every_s: float = Field(3600.0, ge=0)

    # --- request limits -----------------------------------------------------------------------------
    max_depth: int = Field(48, ge=1)
    max_embed_dim: int = Field(2048, ge=8)
    max_params: int = Field(400_000_000, ge=1)
    max_upload_bytes: int = Field(2 * 1024**3, ge=1024)
    default_wait_s: float = Field(5.0, ge=0)
    max_wait_s: float = Field(60.0, ge=0)
    #: Dataset archives: most files, most bytes once unpacked (each file counted as at least one 4 KiB block).
    dataset_max_files: int = Field(100_000, ge=1)
    dataset_max_bytes: int = Field(16 * 1024**3, ge=1)
    #: Roots under which ``imagefolder:`` dataset paths may lie (empty list: none allowed).
    allowed_dataset_roots: list[Path] = Field(default_factory=list)

    #: On SIGTERM, requests still running this many seconds later (event streams, a slow download) are cut, so
    #: that a stop always completes.
    shutdown_grace_s: float = Field(10.0, ge=0)

    seed_on_start: bool = True
    #: ``json`` (one object per line, for log collectors) or ``text`` (for people); empty: json in production,
    #: text in development.
    log_format: Literal["json", "text", ""] = ""
    #: Who may scrape ``/metrics``: ``open`` (anyone), ``admin`` (an admin key); empty: admin in production, open
    #: in development.
    metrics_access: Literal["open", "admin", ""] = ""

    @model_validator(mode="after")
    def _storage_url_is_known(self) -> "Settings":
        if self.storage_url and not self.storage_url.startswith(("file://", "s3://")):
            raise ValueError(f"LEARNGENE_STORAGE_URL must be file:///path or s3://bucket[/prefix], "
                             f"got {self.storage_url!r}")
        if self.storage_url.startswith("s3://") and not self.storage_url.removeprefix("s3://").split("/")[0]:
            raise ValueError(f"LEARNGENE_STORAGE_URL {self.storage_url!r} names no bucket")
        return self

    @model_validator(mode="after")
    def _production_needs_real_settings(self) -> "Settings":
        if self.environment == "production":
            missing = [
                name
                for name, value in (
                    ("LEARNGENE_API_TOKEN", self.api_token),
                    ("LEARNGENE_DATABASE_URL", self.database_url),
                    ("LEARNGENE_BROKER_URL", self.broker_url),
                )
                if not value
            ]
            if missing:
                raise ValueError(f"production needs {', '.join(missing)} to be set")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'registry.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        """The local artifact folder (file:// storage), or the local cache folder (s3:// storage)."""
        if self.storage_url.startswith("s3://"):
            return self.resolved_cache_dir
        if self.storage_url:
            return Path(self.storage_url.removeprefix("file://"))
        return (self.data_dir / "artifacts").resolve()

    @property
    def resolved_cache_dir(self) -> Path:
        return (self.cache_dir or self.data_dir / "cache").resolve()

    @property
    def resolved_log_format(self) -> str:
        return self.log_format or ("json" if self.environment == "production" else "text")

    @property
    def resolved_metrics_access(self) -> str:
        return self.metrics_access or ("admin" if self.environment == "production" else "open")

    @property
    def uses_celery(self) -> bool:
        return bool(self.broker_url)

    def job_torch_threads(self, in_process: bool) -> int | None:
        """Threads for torch in a job-running process; None keeps torch's default."""
        if self.torch_threads:
            return self.torch_threads
        if in_process:
            return max(1, (os.cpu_count() or 1) // (self.inprocess_workers + 1))
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
