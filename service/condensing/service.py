"""Business rules of condensing: everything a job needs is checked before it is queued."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from engine.data_uri import BUILTIN_CLASSES, BUILTIN_PREFIX, builtin_classes, check_available, parse_builtin
from service.ancestries import service as ancestries
from service.condensing.schemas import CondenseRequest
from service.bounds import MAX_ID, parse_id
from service.condensing.tasks import CONDENSE, CondensePayload
from service.context import AppContext
from service.datasets import service as datasets
from service.db import UnitOfWork
from service.errors import InvalidRequest
from service.jobs import service as jobs
from service.keys.auth import Principal
from service.limits import quotas
from service.learngenes import repository as learngene_repo
from service.learngenes.service import LATEST, check_name
from service.models import Job, LearngeneVersion
from service.ownership import SYSTEM_OWNER, check_may_change, require_visible


def check_dataset(session: Session, ctx: AppContext, uri: str, caller: Principal | None = None) -> str:
    """Normalize a dataset URI and make sure a worker may read it (and the caller: another owner's private
    upload is not found)."""
    if uri.startswith(BUILTIN_PREFIX):
        try:
            parsed = parse_builtin(uri)
            # Checked here so a missing package is a 422 naming it, not a failed job. The API and the workers
            # are one install (one image), so what is missing here is missing there.
            check_available(parsed.name)
        except ValueError as exc:
            raise InvalidRequest(str(exc), field="dataset") from None
        return str(parsed)
    if uri.startswith("imagefolder:"):
        path = Path(uri.removeprefix("imagefolder:")).expanduser()
        if not path.is_absolute():
            raise InvalidRequest("imagefolder paths must be absolute", field="dataset")
        real = path.resolve()
        roots = [r.resolve() for r in ctx.settings.allowed_dataset_roots]
        if not any(real == root or root in real.parents for root in roots):
            raise InvalidRequest(
                f"{path} is outside the allowed dataset roots (LEARNGENE_ALLOWED_DATASET_ROOTS)", field="dataset"
            )
        if not real.is_dir():
            raise InvalidRequest(f"{path} is not a directory", field="dataset")
        return f"imagefolder:{real}"
    if uri.startswith("dataset:"):
        ident = parse_id(uri.removeprefix("dataset:"))
        if ident is None:
            raise InvalidRequest(f"dataset:<id> needs an id from 1 to {MAX_ID}", field="dataset")
        datasets.get_dataset(session, ident, field="dataset", caller=caller)
        return uri
    raise InvalidRequest(f"dataset must be builtin:<{'|'.join(BUILTIN_CLASSES)}>[+<another>][?classes=0-4], "
                         "imagefolder:<path> or dataset:<id>", field="dataset")


def _refine_source(session: Session, req: CondenseRequest) -> LearngeneVersion:
    """The version a refine job starts from: the learngene's latest, condensed from the requested ancestry."""
    lg = learngene_repo.by_name(session, req.learngene)
    if lg is None:
        raise InvalidRequest(f"refine adds to an existing learngene; {req.learngene!r} does not exist",
                             field="learngene")
    source = learngene_repo.version_by_alias(session, lg.id, LATEST)
    if source is None:
        raise InvalidRequest(f"learngene {req.learngene!r} has no version to refine", field="learngene")
    if source.ancestry_id is not None and source.ancestry_id != req.ancestry:
        raise InvalidRequest(f"refinement distils from the ancestry {req.learngene!r} was condensed from: "
                             f"ancestry {source.ancestry_id}", field="ancestry")
    return source


def dataset_classes(session: Session, uri: str | None, caller: Principal | None = None) -> int | None:
    """The class count of a checked dataset URI where it is known without reading images: a built-in's (its
    ``classes`` option or all its sources'), an uploaded dataset's recorded count; None for a server folder."""
    if uri is None:
        return None
    if uri.startswith(BUILTIN_PREFIX):
        parsed = parse_builtin(uri)
        return len(parsed.classes) if parsed.classes is not None else len(builtin_classes(parsed.name))
    if uri.startswith("dataset:"):
        ident = parse_id(uri.removeprefix("dataset:"))
        return None if ident is None else datasets.get_dataset(session, ident, "dataset", caller).num_classes
    return None


def check_request(method: str, mode: str, ancestry_spec: dict[str, Any], params: dict[str, Any],
                  source: LearngeneVersion | None = None, classes: int | None = None) -> None:
    """The engine's own rules (:func:`engine.train.condense.check_request`) before queuing: a job the API accepts
    is one the worker can run (a mode the method lacks, a family feature it does not carry, parameters that do
    not fit the ancestry, refine sizes the learngene cannot make). Each refusal is a 422 naming the field."""
    from engine.methods.base import Learngene
    from engine.spec import ViTSpec
    from engine.train.condense import check_request as engine_check

    learngene = None if source is None else Learngene(method=method, tensors={}, meta=source.meta)
    try:
        engine_check(method, mode, ViTSpec.from_dict(ancestry_spec), params, learngene, classes)
    except ValueError as exc:
        raise InvalidRequest(str(exc), field=getattr(exc, "field", None) or "params") from exc


def check_run_params(params: dict[str, Any], req: CondenseRequest, ancestry_spec: dict[str, Any]) -> None:
    """What a training run's params need of the ancestry (an ``img_size`` on its patch grid), and ``evaluate:
    false`` on the request meaning no metrics pass at all: unless ``params.evaluate`` says otherwise, the run's
    validation metrics are skipped too, not only the evaluation card."""
    from engine.methods.params import check_img_size

    if "img_size" in params:
        check_img_size(params["img_size"], int(ancestry_spec["patch_size"]))
    if req.evaluate is False and "evaluate" in params and "evaluate" not in req.params:
        params["evaluate"] = False


def submit(uow: UnitOfWork, ctx: AppContext, req: CondenseRequest, caller: Principal | None = None) -> Job:
    from engine.methods import get_entry
    from engine.methods.params import ParamError

    session = uow.session
    ancestry = ancestries.get_ancestry(session, req.ancestry, field="ancestry", caller=caller)
    check_name(req.learngene)
    existing = learngene_repo.by_name(session, req.learngene)
    if existing is not None:
        what = f"learngene {req.learngene!r}"
        require_visible(caller, existing.owner, existing.visibility, what, field="learngene")
        check_may_change(caller, existing.owner, what, field="learngene")
        if existing.method != req.method:
            raise InvalidRequest(f"{what} holds {existing.method} versions; pick another name", field="learngene")
    # Whom the learngene belongs to once the job publishes: its owner already, or the caller who creates it.
    if existing is not None:
        owner = existing.owner
    else:
        owner = caller.owner if caller is not None else SYSTEM_OWNER
    entry = get_entry(req.method)
    mode = req.mode or ("train" if req.dataset and entry.offers("train") else "fit")
    if not entry.offers(mode):
        raise InvalidRequest(f"{req.method} has no {mode} mode; it offers {list(entry.modes)}", field="mode")
    dataset = check_dataset(session, ctx, req.dataset, caller) if req.dataset else None
    if mode in ("train", "refine") and dataset is None:
        raise InvalidRequest(f"mode {mode} needs a dataset", field="dataset")
    if req.evaluate and dataset is None:
        raise InvalidRequest("the evaluation card needs a dataset (or leave evaluate out)", field="evaluate")
    evaluate = dataset is not None if req.evaluate is None else req.evaluate
    try:
        params = entry.validate_params(req.params, mode)
        check_run_params(params, req, ancestry.spec)
    except ParamError as exc:
        raise InvalidRequest(str(exc), field=exc.field) from exc
    except ValueError as exc:
        raise InvalidRequest(str(exc), field="params") from exc
    source = _refine_source(session, req) if mode == "refine" else None
    check_request(req.method, mode, ancestry.spec, params, source, dataset_classes(session, dataset, caller))
    payload = CondensePayload(ancestry_id=ancestry.id, method=req.method, mode=mode, dataset=dataset,
                              learngene=req.learngene, params=params, evaluate=evaluate,
                              description=req.description, source_version_id=source.id if source else None,
                              owner=owner, visibility=req.visibility)
    if caller is not None:
        quotas.admit(session, caller)
    return jobs.submit(uow, ctx, CONDENSE, payload, owner=caller.owner if caller else None)
