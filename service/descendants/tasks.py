"""The expansion job kind: a learngene (or an ancestry) + a resolved spec + a seed -> model.safetensors +
config.json. A descendant's status follows its job: ``on_finished`` writes it, however the job ends."""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.descendants.cache import evict_over_budget
from service.descendants.schemas import HeadChoice
from service.jobs.dispatch import QUEUE_CPU
from service.jobs.kinds import JobContext, JobFailed, JobKind
from service.jobs.states import FinalState
from service.models import Ancestry, DescendantRow, Job, LearngeneVersion
from service.storage import ArtifactStore

log = logging.getLogger(__name__)
#: The job error code of an expansion whose bytes differ from the sha256 recorded for its descendant.
ERROR_NOT_REPRODUCIBLE = "not_reproducible"

_CACHE_SIZE = 4
_cache: OrderedDict[str, Any] = OrderedDict()
_cache_lock = threading.Lock()


def _cached(sha256: str, load: Any) -> Any:
    """Learngenes are read from storage once per worker process and kept (a few, least recently used out)."""
    with _cache_lock:
        if sha256 in _cache:
            _cache.move_to_end(sha256)
            return _cache[sha256]
    value = load()
    with _cache_lock:
        _cache[sha256] = value
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return value


def _source(store: ArtifactStore, row: DescendantRow, session: Session) -> tuple[Any, dict[str, str]]:
    from engine.ancestry import load_ancestry
    from engine.artifacts import load_learngene
    from engine.methods.base import Learngene

    if row.learngene_version_id is not None:
        version = session.get(LearngeneVersion, row.learngene_version_id)
        assert version is not None and version.storage_key and version.sha256
        path = store.local_path(version.storage_key)
        learngene = _cached(version.sha256, lambda: load_learngene(path))
        provenance = {"learngene": version.learngene.name, "version": str(version.version),
                      "learngene_sha256": version.sha256}
        return learngene, provenance
    ancestry = session.get(Ancestry, row.ancestry_id)
    assert ancestry is not None
    path = store.local_path(ancestry.storage_key)

    def load() -> Any:
        state, spec = load_ancestry(path, ancestry.architecture, ancestry.model_args)
        return Learngene(method="weight-selection", tensors=state,
                         meta={"spec": spec.to_dict(), "preprocessing": dict(ancestry.preprocessing or {})})

    # Keyed by the row too: two ancestries may share a file but not their preprocessing.
    learngene = _cached(f"{ancestry.sha256}:{ancestry.id}", load)
    return learngene, {"ancestry": str(ancestry.id), "ancestry_sha256": ancestry.sha256}


class ExpandPayload(BaseModel):
    descendant_id: int
    head: HeadChoice = "inherit"


def expand(jctx: JobContext, payload: ExpandPayload) -> dict[str, Any]:
    from engine.artifacts import descendant_config, save_descendant
    from engine.methods import get_entry
    from engine.spec import ViTSpec

    descendant_id = payload.descendant_id
    with jctx.sessions() as session:
        row = session.get(DescendantRow, descendant_id)
        if row is None:
            raise JobFailed(f"descendant {descendant_id} no longer exists")
        if row.status == "ready":
            return {"descendant_id": row.id, "sha256": row.sha256}
        learngene, provenance = _source(jctx.store, row, session)
        method_name, spec_dict, seed = row.method, dict(row.spec), row.seed
        #: Weights made again after an eviction must be the very bytes made before.
        expected = row.sha256
    spec = ViTSpec.from_dict(spec_dict)
    descendant = get_entry(method_name).expand(learngene, spec, seed, head=payload.head)
    jctx.check_cancelled()  # before paying for the write; the kernel also refuses a success after a cancel
    metadata = {
        **provenance,
        "method": method_name,
        "spec": json.dumps(spec_dict, sort_keys=True),
        "seed": str(seed),
        "producer": "learngene-service",
        **({"head": payload.head} if payload.head != "inherit" else {}),
    }
    fd, tmp = tempfile.mkstemp(dir=jctx.store.scratch_dir(), suffix=".safetensors")
    os.close(fd)
    digest = save_descendant(descendant, metadata, Path(tmp))
    if expected is not None and digest != expected:
        Path(tmp).unlink(missing_ok=True)
        log.error("DESCENDANT NOT REPRODUCIBLE: descendant %d made again has sha256 %s, but %s was recorded when "
                  "it was first made (method %s, spec %s, seed %d); the new bytes are discarded, never served",
                  descendant_id, digest, expected, method_name, spec_dict, seed)
        raise JobFailed(f"descendant {descendant_id} made again does not match its recorded sha256 "
                        f"({digest[:12]}... instead of {expected[:12]}...); its weights are not served",
                        code=ERROR_NOT_REPRODUCIBLE)
    evict_over_budget(jctx.sessions, jctx.store, jctx.settings, incoming=os.path.getsize(tmp))
    stored = jctx.store.put_file(Path(tmp), move=True, sha256=digest)
    config = descendant_config(descendant, spec, learngene.meta.get("preprocessing"))

    def record(session: Session) -> None:
        target = session.get(DescendantRow, descendant_id)
        assert target is not None
        target.sha256 = stored.sha256
        target.size_bytes = stored.size
        target.storage_key = stored.key
        target.architecture = descendant.architecture
        target.config = config
        target.details = {**target.details, **descendant.details}

    jctx.on_success(record)
    return {"descendant_id": descendant_id, "sha256": stored.sha256, "size_bytes": stored.size}


def settle_descendant(session: Session, job: Job, state: FinalState) -> None:
    """The descendant's status is its job's outcome: ready with its weights, else failed (a later request for
    it starts a new job). A descendant already handed to a newer job is the newer job's to settle."""
    row = session.scalar(select(DescendantRow).where(DescendantRow.job_id == job.id))
    if row is not None:
        row.status = "ready" if state == "succeeded" and row.storage_key is not None else "failed"


EXPAND = JobKind(name="expand", payload=ExpandPayload, run=expand, queue=lambda _: QUEUE_CPU,
                 on_finished=settle_descendant)
#: What this domain gives the composition root to run.
KINDS = (EXPAND,)
