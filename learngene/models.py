"""What the API returns, as the client's own dataclasses: independent of the service's pydantic schemas (the
client imports nothing of the service), tolerant of fields a newer server adds."""
from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T", bound="Resource")

FINISHED = ("succeeded", "failed", "cancelled")


def _parse_time(value: Any) -> Any:
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value


@dataclass
class Resource:
    """``from_json`` keeps the fields this client knows; ``raw`` keeps the whole body (``--json`` prints it)."""

    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, kw_only=True)
    #: The client that fetched it, so that ``descendant.download(dir)`` and ``job.follow()`` need no other.
    client: Any = field(default=None, repr=False, compare=False, kw_only=True)

    @classmethod
    def from_json(cls: type[T], data: dict[str, Any], client: Any = None) -> T:
        known = {f.name for f in dataclasses.fields(cls)} - {"raw", "client"}
        values = {k: _parse_time(v) if k.endswith("_at") else v for k, v in data.items() if k in known}
        return cls(**values, raw=data, client=client)


@dataclass
class Learngene(Resource):
    name: str
    method: str
    family: str = ""
    description: str = ""
    latest_version: int | None = None
    version_count: int = 0
    aliases: dict[str, int] = field(default_factory=dict)
    created_at: dt.datetime | None = None


@dataclass
class Version(Resource):
    learngene: str
    version: int
    method: str
    aliases: list[str] = field(default_factory=list)
    lineage: dict[str, Any] = field(default_factory=dict)
    hyperparams: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    size_bytes: int | None = None
    tensors_url: str = ""
    created_at: dt.datetime | None = None


@dataclass
class Ancestry(Resource):
    id: int
    name: str
    architecture: str
    model_args: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    param_count: int = 0
    sha256: str = ""
    size_bytes: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: dt.datetime | None = None


@dataclass
class Dataset(Resource):
    id: int
    name: str
    uri: str
    num_classes: int = 0
    num_images: int = 0
    sha256: str = ""
    size_bytes: int = 0
    created_at: dt.datetime | None = None


@dataclass
class Job(Resource):
    id: str
    kind: str
    state: str
    queue: str = ""
    progress: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: str | None = None
    attempts: int = 0
    max_attempts: int = 0
    cancel_requested: bool = False
    worker: str | None = None
    created_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    heartbeat_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def follow(self, progress: bool | None = None, timeout: float | None = None) -> "Job":
        """Stream the job's events (a progress bar on a terminal) until it ends; the finished job.
        Raises ``JobFailed`` when it failed or was cancelled."""
        return self.client.follow(self, progress=progress, timeout=timeout)  # type: ignore[no-any-return]


@dataclass
class CondenseJob(Job):
    def follow(self, progress: bool | None = None, timeout: float | None = None) -> "Version":  # type: ignore[override]
        """Follow the condensing job to the learngene version it produced."""
        job = self.client.follow(self, progress=progress, timeout=timeout)
        assert job.result is not None
        return self.client.version(job.result["learngene"], job.result["version"])  # type: ignore[no-any-return]


@dataclass
class Descendant(Resource):
    id: int
    status: str
    method: str
    source: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    param_count: int = 0
    gflops: float = 0.0
    sha256: str | None = None
    size_bytes: int | None = None
    weights_url: str = ""
    config_url: str = ""
    metadata_url: str = ""
    hub_repo_id: str = ""
    job_id: str | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    created_at: dt.datetime | None = None
    owner: str | None = None
    pinned: bool = False

    def download(self, directory: Any, progress: bool | None = None) -> "Download":
        """Write ``model.safetensors`` and ``config.json`` into ``directory`` (resumed, sha256-checked, skipped
        when already there)."""
        return self.client.download(self, directory, progress=progress)  # type: ignore[no-any-return]

    def load(self, directory: Any = None, progress: bool | None = None) -> Any:
        """The timm model with these weights (imports torch and timm)."""
        return self.client.load(self, directory=directory, progress=progress)


@dataclass
class Download:
    """What ``download`` did: the files, and how many weight bytes crossed the network this time."""

    weights: Path
    config: Path
    sha256: str
    size_bytes: int
    bytes_fetched: int
    resumed_from: int = 0  # bytes of an earlier partial download that were kept
    skipped: bool = False  # the verified file was already there: nothing fetched
    discarded_corrupt_partial: bool = False  # a partial file failed the sha256 check and was fetched again
