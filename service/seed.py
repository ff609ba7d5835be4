"""The first start of a fresh install: a small ancestry trained on scikit-learn's digits, condensed by the
service's own condensing jobs into one ready learngene per method, so a newcomer's first request works.

Reproducible (fixed seeds, data shipped with scikit-learn, nothing downloaded) and a few minutes on a 2-core CPU.
Later starts find the learngenes and do nothing.
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from service.ancestries.service import register_upload
from service.condensing.schemas import CondenseRequest
from service.condensing.service import submit
from service.context import AppContext
from service.db import unit_of_work
from service.jobs.repository import FINISHED
from service.models import Ancestry, Job, Learngene

SEED_ANCESTRY = "digits-vit"
DATASET = "builtin:digits"
#: (method, mode, params): fit where the math allows it; small training runs otherwise.
SEED_LEARNGENES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("tleg", "fit", {}),
    ("wave", "fit", {}),
    ("layers", "train", {}),
    ("pool", "train", {"steps": 300}),
)


def seed_if_empty(ctx: AppContext, log: Callable[[str], None] = print, force: bool = False,
                  timeout_s: float = 1800) -> list[str]:
    """Seed an empty registry; returns the names of the learngenes created."""
    with ctx.sessions() as session:
        if not force and session.scalar(select(func.count()).select_from(Learngene)):
            return []
    ancestry_id = _seed_ancestry(ctx, log)
    job_ids: dict[str, str] = {}
    for method, mode, params in SEED_LEARNGENES:
        name = f"digits-{method}"
        req = CondenseRequest(ancestry=ancestry_id, method=method, learngene=name, dataset=DATASET, mode=mode,
                              params=params, evaluate=True,
                              description=f"Seeded: {method} condensed ({mode}) from {SEED_ANCESTRY} on digits.")
        with unit_of_work(ctx.sessions) as uow:
            job_ids[name] = submit(uow, ctx, req).id
        log(f"condensing {name} ({mode}) as job {job_ids[name]}")
    deadline = time.monotonic() + timeout_s
    pending = dict(job_ids)
    while pending and time.monotonic() < deadline:
        time.sleep(0.5)
        with ctx.sessions() as session:
            for name, job_id in list(pending.items()):
                job = session.get(Job, job_id)
                assert job is not None
                if job.state in FINISHED:
                    log(f"{name}: {job.state}" + (f" ({job.error.splitlines()[0]})" if job.error else ""))
                    del pending[name]
    if pending:
        log(f"still running after {timeout_s:.0f}s: {sorted(pending)}; they finish in the background")
    with ctx.sessions() as session:
        done = [n for n, j in job_ids.items() if (job := session.get(Job, j)) and job.state == "succeeded"]
    return done


def _seed_ancestry(ctx: AppContext, log: Callable[[str], None]) -> int:
    with ctx.sessions() as session:
        existing = session.scalar(select(Ancestry.id).where(Ancestry.name == SEED_ANCESTRY).order_by(Ancestry.id))
    if existing is not None:
        return existing
    from safetensors.torch import save_file

    from engine.spec import TIMM_ARCHITECTURE
    from engine.train.ancestry import train_ancestry
    from worker.runner import configure_torch

    configure_torch(ctx)  # the same thread budget as the jobs that follow

    log("training the seed ancestry (a small ViT on scikit-learn's digits)...")
    started = time.perf_counter()
    state, spec, metrics = train_ancestry(DATASET)
    metrics.pop("loss_history", None)
    log(f"ancestry trained in {time.perf_counter() - started:.0f}s, val accuracy {metrics['val_accuracy']:.3f}")
    fd, name = tempfile.mkstemp(dir=ctx.store.scratch_dir(), suffix=".safetensors")
    os.close(fd)
    save_file(state, name, metadata={"source": "learngene-service seed", "dataset": DATASET})
    with unit_of_work(ctx.sessions) as uow:
        row = register_upload(uow.session, ctx, Path(name), name=SEED_ANCESTRY, architecture=TIMM_ARCHITECTURE,
                              model_args=spec.timm_model_args(), metrics=metrics)
        return row.id
