"""The condensing job kind: ancestry (+ dataset) -> a new learngene version, with its lineage and evaluation
card. The version is published with the job's success, in its transaction; any other ending leaves none."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy.orm import Session

from service.condensing.schemas import CondenseMode
from service.datasets.service import get_dataset, resolve_path
from service.jobs.dispatch import QUEUE_CPU, QUEUE_GPU
from service.jobs.kinds import JobCancelled, JobContext, JobFailed, JobKind
from service.learngenes.service import publish_version
from service.models import Ancestry, LearngeneVersion
from service.ownership import Visibility


class CondensePayload(BaseModel):
    """A condensing request after every check of ``service.condensing.service.submit``."""

    ancestry_id: int
    method: str
    mode: CondenseMode
    dataset: str | None
    learngene: str
    params: dict[str, Any]
    evaluate: bool
    description: str
    source_version_id: int | None
    #: Whom the learngene belongs to when the job publishes (its owner, or the caller creating it).
    owner: str | None = None
    #: The learngene's visibility from this version on; None keeps it (a new one: private when owned).
    visibility: Visibility | None = None


class _JobHooks:
    """engine.train's Hooks, backed by the job row: progress events, cancellation, checkpoints in storage."""

    def __init__(self, jctx: JobContext) -> None:
        self.jctx = jctx

    def on_progress(self, progress: dict[str, Any]) -> None:
        self.jctx.progress(progress)

    def should_stop(self) -> bool:
        return self.jctx.should_stop()

    def save_checkpoint(self, blob: bytes) -> None:
        self.jctx.save_checkpoint(blob)

    def load_checkpoint(self) -> bytes | None:
        return self.jctx.load_checkpoint()


def dataset_uri_for_engine(jctx: JobContext, uri: str | None) -> str | None:
    """``dataset:<id>`` (an upload) becomes the ``imagefolder:`` path it was unpacked to."""
    if uri is None or not uri.startswith("dataset:"):
        return uri
    with jctx.sessions() as session:
        row = get_dataset(session, int(uri.removeprefix("dataset:")))
        return f"imagefolder:{resolve_path(jctx.store, jctx.settings, row)}"


def condense(jctx: JobContext, p: CondensePayload) -> dict[str, Any]:
    from engine.ancestry import load_ancestry
    from engine.artifacts import load_learngene, save_learngene
    from engine.train import Cancelled as TrainingCancelled
    from engine.train import condense as condense_ancestry
    from engine.methods.params import DEFAULT_EVAL_IMAGES
    from engine.train import evaluate_card, refine

    with jctx.sessions() as session:
        ancestry = session.get(Ancestry, p.ancestry_id)
        if ancestry is None:
            raise JobFailed(f"ancestry {p.ancestry_id} no longer exists")
        path = jctx.store.local_path(ancestry.storage_key)
        architecture, model_args = ancestry.architecture, ancestry.model_args
        preprocessing = dict(ancestry.preprocessing or {})
        source_path, source_number = None, None
        if p.source_version_id is not None:
            source = session.get(LearngeneVersion, p.source_version_id)
            if source is None or source.storage_key is None:
                raise JobFailed(f"learngene version {p.source_version_id} to refine no longer exists")
            source_path, source_number = jctx.store.local_path(source.storage_key), source.version
    state, spec = load_ancestry(path, architecture, model_args)
    dataset = dataset_uri_for_engine(jctx, p.dataset)
    hooks = _JobHooks(jctx)
    started = time.perf_counter()
    try:
        if p.mode == "refine":
            assert source_path is not None and dataset is not None
            learngene, metrics, loss_history = refine(p.method, load_learngene(source_path), state, spec, dataset,
                                                      p.params, hooks, preprocessing)
            metrics["refined_from_version"] = source_number
        else:
            learngene, metrics, loss_history = condense_ancestry(p.method, p.mode, state, spec, dataset,
                                                                 p.params, hooks, preprocessing)
        # The card fine-tunes at the run's image size, on the run's bounded validation subset.
        card = evaluate_card(learngene, dataset, hooks=hooks, img_size=p.params.get("img_size"),
                             eval_images=p.params.get("eval_images") or DEFAULT_EVAL_IMAGES) \
            if p.evaluate and dataset else None
    except TrainingCancelled as exc:
        raise JobCancelled() from exc
    jctx.check_cancelled()
    metrics = {**metrics, "seconds": round(time.perf_counter() - started, 2)}
    if card is not None:
        metrics["evaluation_card"] = card

    fd, tmp = tempfile.mkstemp(dir=jctx.store.scratch_dir(), suffix=".safetensors")
    os.close(fd)
    digest = save_learngene(learngene, Path(tmp))
    stored = jctx.store.put_file(Path(tmp), move=True, sha256=digest)

    def publish(session: Session) -> None:
        version = publish_version(
            session,
            name=p.learngene,
            method=p.method,
            description=p.description,
            ancestry_id=p.ancestry_id,
            job_id=jctx.job_id,
            dataset=p.dataset,
            mode=p.mode,
            hyperparams=p.params,
            metrics=metrics,
            meta=learngene.meta,
            sha256=stored.sha256,
            size_bytes=stored.size,
            storage_key=stored.key,
            owner=p.owner,
            visibility=p.visibility,
        )
        result["version"] = version.version

    result: dict[str, Any] = {"learngene": p.learngene, "sha256": stored.sha256, "size_bytes": stored.size,
                              "loss_history": loss_history, "metrics": metrics}
    jctx.on_success(publish)
    return result


def _queue(p: CondensePayload) -> str:
    # Fitting is seconds of linear algebra; training wants the GPU queue.
    return QUEUE_CPU if p.mode == "fit" else QUEUE_GPU


CONDENSE = JobKind(name="condense", payload=CondensePayload, run=condense, queue=_queue)
#: What this domain gives the composition root to run.
KINDS = (CONDENSE,)
