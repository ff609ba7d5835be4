"""The first start of a fresh install: small ancestries shipped with the code (service/seed_data/, made by
scripts/train_seed_ancestry.py) are registered and condensed by the service's own condensing jobs into one ready
learngene per method, so a newcomer's first request works.

Nothing is trained: each ancestry is a checkpoint checked against the sha256 recorded beside it, and every
learngene is a data-free fit (seconds each). Later starts find the learngenes and do nothing.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from engine.data_uri import DatasetUnavailable, check_available, parse_builtin
from service.ancestries.service import register_upload
from service.condensing.schemas import CondenseRequest
from service.condensing.service import submit
from service.context import AppContext
from service.db import unit_of_work
from service.jobs.states import FINISHED
from service.models import Ancestry, Job, LearngeneRow

SEED_DATA = Path(__file__).resolve().parent / "seed_data"
#: How to get the jobs of a deployment with a broker done.
NO_WORKER_HINT = ("start one with `learngene worker --queues cpu,gpu`, with the same LEARNGENE_BROKER_URL and "
                  "LEARNGENE_DATABASE_URL")
#: Each shipped ancestry (its entry in seed_data/ancestries.json) and the prefix of its learngenes' names:
#: mixed-tleg, ..., fashion-tleg, ..., digits-tleg, ... The quick start uses the broadest, mixed-vit (all of
#: Fashion-MNIST and MNIST); fashion-vit is report v2's ancestry, and digits-vit the tests' smallest.
SEED_ANCESTRIES = {"mixed-vit": "mixed", "fashion-vit": "fashion", "digits-vit": "digits"}
#: (method, params) of every seeded learngene: each method's data-free fit, so the first start trains nothing.
SEED_METHODS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("tleg", {}),
    ("wave", {}),
    ("layers", {}),
    ("pool", {}),
    ("front", {}),
)


def seed_manifest() -> dict[str, dict[str, Any]]:
    """The shipped ancestries: file, sha256, dataset, timm model arguments, recipe and accuracies."""
    return json.loads((SEED_DATA / "ancestries.json").read_text())


#: Seconds without any seeding job taken by a worker before the waiting is said out loud.
NOTICE_AFTER_S = 10.0


class NoWorker(RuntimeError):
    """Seeding jobs were queued, and no worker took any of them in time."""


def seed_if_empty(ctx: AppContext, log: Callable[[str], None] = print, force: bool = False,
                  timeout_s: float = 1800, worker_wait_s: float = 120) -> list[str]:
    """Seed an empty registry; returns the names of the learngenes created. With a broker, the jobs need a
    Celery worker: when none has taken one ``worker_wait_s`` after they were queued, raises :class:`NoWorker`
    (the jobs stay queued and run once a worker starts)."""
    with ctx.sessions() as session:
        if not force and session.scalar(select(func.count()).select_from(LearngeneRow)):
            return []
    manifest = seed_manifest()
    # Every file is checked before anything is registered: after a refusal halfway, the next start would find
    # learngenes and never seed the rest.
    shipped = {name: verified_checkpoint(manifest[name]) for name in SEED_ANCESTRIES}
    job_ids: dict[str, str] = {}
    for ancestry_name, prefix in SEED_ANCESTRIES.items():
        entry = manifest[ancestry_name]
        ancestry_id = _seed_ancestry(ctx, ancestry_name, entry, shipped[ancestry_name])
        dataset = entry["dataset"]
        try:
            check_available(parse_builtin(dataset).name)
        except DatasetUnavailable as exc:
            # A fit reads no data: a missing dataset package costs the lineage its dataset, not the first start.
            log(f"{exc}; {ancestry_name}'s learngenes are seeded without their dataset in the lineage")
            dataset = None
        for method, params in SEED_METHODS:
            name = f"{prefix}-{method}"
            # The dataset is the ancestry's, recorded as lineage; a fit reads no data, and the evaluation card
            # (minutes of fine-tuning) is left to POST /v1/condense-jobs: docs/quality.md measures these methods.
            req = CondenseRequest(ancestry=ancestry_id, method=method, learngene=name, dataset=dataset,
                                  mode="fit", params=params, evaluate=False, visibility="public",
                                  description=f"Seeded: {method} fit (data-free) from {ancestry_name}, a ViT "
                                              f"trained on {entry['dataset']}.")
            with unit_of_work(ctx.sessions) as uow:
                job_ids[name] = submit(uow, ctx, req).id
            log(f"condensing {name} as job {job_ids[name]}")
    _follow(ctx, job_ids, log, timeout_s, worker_wait_s)
    with ctx.sessions() as session:
        done = [n for n, j in job_ids.items() if (job := session.get(Job, j)) and job.state == "succeeded"]
    return done


def _follow(ctx: AppContext, job_ids: dict[str, str], log: Callable[[str], None], timeout_s: float,
            worker_wait_s: float) -> None:
    """Log each seeding job as it ends, for at most ``timeout_s``; say so when no worker takes any of them, and
    give up (:class:`NoWorker`) after ``worker_wait_s``."""
    queued_at = time.monotonic()
    pending = dict(job_ids)
    taken = not ctx.settings.uses_celery  # the in-process worker is there
    noticed = False
    while pending and time.monotonic() < queued_at + timeout_s:
        time.sleep(0.5)
        with ctx.sessions() as session:
            for name, job_id in list(pending.items()):
                job = session.get(Job, job_id)
                assert job is not None
                taken = taken or job.state != "queued"
                if job.state in FINISHED:
                    log(f"{name}: {job.state}" + (f" ({job.error.splitlines()[0]})" if job.error else ""))
                    del pending[name]
        waited = time.monotonic() - queued_at
        if not taken and waited >= worker_wait_s:
            raise NoWorker(f"no worker took a seeding job in {waited:.0f} s: {NO_WORKER_HINT}; the {len(pending)} "
                           "jobs stay queued and run once one does")
        if not taken and not noticed and waited >= min(NOTICE_AFTER_S, worker_wait_s / 2):
            noticed = True
            log(f"waiting for a worker to take the seeding jobs ({NO_WORKER_HINT}); giving up after "
                f"{worker_wait_s:.0f} s")
    if pending:
        log(f"still running after {timeout_s:.0f}s: {sorted(pending)}; they finish in the background")


def verified_checkpoint(entry: dict[str, Any]) -> Path:
    """The shipped file of a manifest entry; ``RuntimeError`` when its sha256 is not the one recorded."""
    shipped = SEED_DATA / entry["file"]
    digest = hashlib.sha256(shipped.read_bytes()).hexdigest()
    if digest != entry["sha256"]:
        raise RuntimeError(f"{shipped} has sha256 {digest}, ancestries.json records {entry['sha256']}: "
                           "rerun scripts/train_seed_ancestry.py or restore the file")
    return shipped


def _seed_ancestry(ctx: AppContext, name: str, entry: dict[str, Any], shipped: Path) -> int:
    with ctx.sessions() as session:
        existing = session.scalar(select(Ancestry.id).where(Ancestry.name == name, Ancestry.deleted_at.is_(None))
                                  .order_by(Ancestry.id))
    if existing is not None:
        return existing
    from engine.spec import TIMM_ARCHITECTURE

    # register_upload consumes its file; the shipped one stays.
    with tempfile.NamedTemporaryFile(dir=ctx.store.scratch_dir(), suffix=".safetensors", delete=False) as copy:
        with shipped.open("rb") as source:
            shutil.copyfileobj(source, copy)
    metrics = {**entry["metrics"], "recipe": entry["recipe"], "made_by": "scripts/train_seed_ancestry.py"}
    with unit_of_work(ctx.sessions) as uow:
        row, _ = register_upload(uow.session, ctx, Path(copy.name), name=name, architecture=TIMM_ARCHITECTURE,
                                 model_args=entry["model_args"], metrics=metrics)
        return row.id
