"""HTTP for browsing the learngene registry."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from service.deps import CtxDep, Reader, UowDep, Writer
from service.errors import NotFound
from service.files import head_responses, serve_blob
from service.http_errors import error_responses
from service.learngenes import repository, service
from service.learngenes.schemas import LearngeneOut, LearngeneVersionOut
from service.pagination import Page, PageParams, page_params, paginate
from service.registry import deletion
from service.registry.schemas import AliasIn, DeletedOut

router = APIRouter(prefix="/v1/learngenes", tags=["learngenes"])


@router.get("", operation_id="list_learngenes", response_model=Page[LearngeneOut], responses=error_responses(422))
def list_learngenes(
    uow: UowDep, caller: Reader, page: Annotated[PageParams, Depends(page_params)],
    method: Annotated[str | None, Query(max_length=40)] = None,
) -> Page[LearngeneOut]:
    """The learngenes the caller may see: public ones, and private ones of their own (admins: all)."""
    rows = repository.list_page(uow.session, page.limit, page.after_text(), method, caller)
    outs = service.learngene_outs(uow.session, rows[: page.limit])
    return paginate(rows, page, lambda r: outs[r.id], lambda r: r.name)


@router.get("/{name}", operation_id="get_learngene", response_model=LearngeneOut,
            responses=error_responses(404, 410))
def get_learngene(name: str, uow: UowDep, caller: Reader) -> LearngeneOut:
    return service.learngene_out(uow.session, service.get_learngene(uow.session, name, caller, gone=True))


@router.delete("/{name}", operation_id="delete_learngene", response_model=DeletedOut,
               responses=error_responses(401, 403, 404, 409))
def delete_learngene(name: str, ctx: CtxDep, uow: UowDep, caller: Writer) -> DeletedOut:
    """Delete every version of a learngene (and the descendants expanded from them), for its owner or an admin.
    The learngene stays as a tombstone (410) that keeps its name for its owner, who may publish into it again."""
    return DeletedOut.model_validate(deletion.delete_learngene(uow, ctx, name, caller).summary())


@router.get("/{name}/aliases", operation_id="list_learngene_aliases", response_model=dict[str, int],
            responses=error_responses(404))
def list_aliases(name: str, uow: UowDep, caller: Reader) -> dict[str, int]:
    """``{alias: version}``; ``latest`` is kept by the service on the newest version."""
    return service.learngene_out(uow.session, service.get_learngene(uow.session, name, caller)).aliases


@router.put("/{name}/aliases/{alias}", operation_id="set_learngene_alias", response_model=dict[str, int],
            responses=error_responses(401, 403, 404, 422))
def set_alias(name: str, alias: str, body: AliasIn, uow: UowDep, caller: Writer) -> dict[str, int]:
    """Point ``alias`` (``production``, ``staging``...) at a version, for the learngene's owner or an admin;
    answers every alias. ``latest`` is the service's (422)."""
    lg = service.set_alias(uow.session, name, alias, body.version, caller)
    return service.learngene_out(uow.session, lg).aliases


@router.delete("/{name}/aliases/{alias}", operation_id="delete_learngene_alias", response_model=dict[str, int],
               responses=error_responses(401, 403, 404, 409))
def delete_alias(name: str, alias: str, uow: UowDep, caller: Writer) -> dict[str, int]:
    """Remove an alias (``latest`` cannot be removed: 409); answers the aliases left."""
    lg = service.delete_alias(uow.session, name, alias, caller)
    return service.learngene_out(uow.session, lg).aliases


@router.get(
    "/{name}/versions",
    operation_id="list_learngene_versions",
    response_model=Page[LearngeneVersionOut],
    responses=error_responses(404, 422),
)
def list_versions(
    name: str, uow: UowDep, caller: Reader, page: Annotated[PageParams, Depends(page_params)]
) -> Page[LearngeneVersionOut]:
    lg = service.get_learngene(uow.session, name, caller)
    after = page.after_id()
    rows = repository.versions_page(uow.session, lg.id, page.limit, after)
    outs = service.version_outs(uow.session, rows[: page.limit], caller)
    return paginate(rows, page, lambda r: outs[r.id], lambda r: r.version)


@router.get(
    "/{name}/versions/{ref}",
    operation_id="get_learngene_version",
    response_model=LearngeneVersionOut,
    responses=error_responses(404, 410),
)
def get_version(name: str, ref: str, uow: UowDep, caller: Reader) -> LearngeneVersionOut:
    """``ref`` is a version number or an alias such as ``latest``; a deleted version answers 410 (who, when,
    sha256)."""
    lg = service.get_learngene(uow.session, name, caller)
    return service.version_out(uow.session, service.get_version(uow.session, lg, ref, gone=True), caller)


@router.delete("/{name}/versions/{ref}", operation_id="delete_learngene_version", response_model=DeletedOut,
               responses=error_responses(401, 403, 404, 409))
def delete_version(name: str, ref: str, ctx: CtxDep, uow: UowDep, caller: Writer) -> DeletedOut:
    """Delete one version (and the descendants expanded from it), for the learngene's owner or an admin; its
    aliases go, ``latest`` moves to the newest version left. Its number is never given again."""
    return DeletedOut.model_validate(deletion.delete_version(uow, ctx, name, ref, caller).summary())


@router.head("/{name}/versions/{ref}/tensors", operation_id="head_learngene_tensors", response_class=Response,
             responses=head_responses("the learngene's tensors") | error_responses(404))
@router.get(
    "/{name}/versions/{ref}/tensors",
    operation_id="download_learngene_tensors",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The learngene as safetensors"},
        206: {"description": "The requested byte range"},
        304: {"description": "Not modified"},
    }
    | error_responses(404, 416),
)
def download_tensors(name: str, ref: str, request: Request, ctx: CtxDep, uow: UowDep, caller: Reader) -> Response:
    """The learngene itself, so a client can expand offline or audit it (metadata in the safetensors header)."""
    lg = service.get_learngene(uow.session, name, caller)
    v = service.get_version(uow.session, lg, ref)
    if v.storage_key is None or v.sha256 is None:
        raise NotFound(f"learngene {name}:{v.version} has no stored tensors")
    return serve_blob(request, ctx, v.storage_key, v.sha256, filename=f"{name}-v{v.version}.safetensors",
                      media_type="application/octet-stream")
