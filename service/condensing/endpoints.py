"""HTTP for condensing: submit a job that turns an ancestry into a new learngene version, list the methods, and
the training loss a condensing job reports (under ``/v1/jobs/{id}``, beside the job it belongs to)."""
from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from service.condensing import service
from service.condensing.loss import loss_png, loss_points
from service.condensing.schemas import CondenseRequest, LossCurve, MethodOut, MethodParam
from service.deps import CtxDep, Reader, UowDep, Writer
from service.http_errors import error_responses
from service.jobs.schemas import JobOut

# Tagged per route: the loss curve is documented with the job it belongs to.
router = APIRouter()


@router.post(
    "/v1/condense-jobs",
    tags=["condensing"],
    operation_id="create_condense_job",
    status_code=202,
    response_model=JobOut,
    responses=error_responses(401, 403, 404, 422, 429),
)
def create_condense_job(body: CondenseRequest, ctx: CtxDep, uow: UowDep, caller: Writer) -> JSONResponse:
    """Queue condensing; follow it at `/v1/jobs/{id}` or `/v1/jobs/{id}/events`. On success the learngene
    gets a new version (and `latest` moves to it); a cancelled or failed job leaves no version behind."""
    job = service.submit(uow, ctx, body, caller)
    uow.commit()
    return JSONResponse(status_code=202, content=JobOut.model_validate(job).model_dump(mode="json"),
                        headers={"location": f"/v1/jobs/{job.id}"})


@router.get("/v1/methods", operation_id="list_methods", response_model=list[MethodOut], tags=["condensing"])
def list_methods() -> list[MethodOut]:
    """Every method, the condensing modes it offers and its parameters with their documented defaults."""
    from engine.methods import REGISTRY

    return [
        MethodOut(
            name=entry.name,
            summary=entry.summary,
            condensing=list(entry.modes),
            baseline=entry.baseline,
            params=[MethodParam(name=key, default=param.default, description=param.help, modes=entry.param_modes(key))
                    for key, param in sorted(entry.params().items())],
        )
        for entry in REGISTRY.values()
    ]


@router.get("/v1/jobs/{job_id}/loss", operation_id="get_job_loss_curve", response_model=LossCurve,
            responses=error_responses(404), tags=["jobs"])
def get_loss_curve(job_id: str, uow: UowDep, caller: Reader) -> LossCurve:
    """The training loss as reported by the job's progress, step by step."""
    return LossCurve(job_id=job_id, points=loss_points(uow.session, job_id, caller)[0])


@router.get("/v1/jobs/{job_id}/loss.png", operation_id="get_job_loss_plot", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "Loss curve plot"}} | error_responses(404),
            tags=["jobs"])
def get_loss_plot(job_id: str, uow: UowDep, caller: Reader) -> Response:
    """The loss curve as a PNG, rendered once per state of the job's progress."""
    points, state = loss_points(uow.session, job_id, caller)
    return Response(loss_png(job_id, points, state), media_type="image/png")
