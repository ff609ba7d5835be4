"""HTTP for jobs: follow, list, cancel, and stream progress (server-sent events). What a job of one kind reports
beyond that is its domain's (a condensing job's loss curve: ``service/condensing/endpoints.py``)."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.deps import CtxDep, Reader, UowDep, Writer
from service.http_errors import ErrorBody, ErrorResponse, error_responses
from service.jobs import repository, service, waiting
from service.jobs.schemas import JobOut
from service.jobs.states import FINISHED, JobState
from service.keys.auth import still_valid
from service.ownership import check_may_change
from service.pagination import Page, PageParams, page_params, paginate

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
#: How often an open event stream looks its key up again (one indexed read): a revoked key's stream ends
#: within this long.
KEY_RECHECK_S = 5.0


@router.get("", operation_id="list_jobs", response_model=Page[JobOut], responses=error_responses(422))
def list_jobs(
    uow: UowDep,
    caller: Reader,
    page: Annotated[PageParams, Depends(page_params)],
    state: JobState | None = None,
    kind: Annotated[str | None, Query(max_length=30)] = None,
) -> Page[JobOut]:
    """The caller's jobs (and those nobody owns); admins see every job."""
    rows = repository.list_page(uow.session, page.limit, page.after_text(32), state, kind, caller)
    return paginate(rows, page, JobOut.model_validate, lambda r: r.id)


@router.get("/{job_id}", operation_id="get_job", response_model=JobOut, responses=error_responses(404))
def get_job(job_id: str, uow: UowDep, caller: Reader) -> JobOut:
    return JobOut.model_validate(service.get_job(uow.session, job_id, caller))


@router.post(
    "/{job_id}/cancel",
    operation_id="cancel_job",
    response_model=JobOut,
    responses=error_responses(401, 403, 404, 409),
)
def cancel_job(job_id: str, ctx: CtxDep, uow: UowDep, caller: Writer) -> JobOut:
    """A queued job is cancelled at once (state `cancelled`); a running one gets `cancel_requested` and ends
    `cancelled` at its next check; it can no longer succeed. 409 once the job has ended."""
    check_may_change(caller, service.get_job(uow.session, job_id, caller).owner, f"job {job_id}")
    return JobOut.model_validate(service.request_cancel(uow, ctx, job_id))


@router.get(
    "/{job_id}/events",
    operation_id="stream_job_events",
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"}}
    | error_responses(404),
    response_class=StreamingResponse,
)
async def stream_job_events(
    job_id: str,
    ctx: CtxDep,
    caller: Reader,
    poll_s: Annotated[float, Query(ge=0.05, le=10)] = 0.5,
    timeout_s: Annotated[float, Query(ge=1, le=3600)] = 600,
) -> StreamingResponse:
    """Every progress event of the job, then a final ``state`` event when it ends (or at ``timeout_s``, at most
    LEARNGENE_MAX_EVENT_STREAM_S). Revoking the key the stream was opened with ends it with an ``error`` event
    (within a few seconds)."""
    await waiting.read(ctx, lambda session: service.get_job(session, job_id, caller))

    def poll(after: int, check_key: bool) -> tuple[list[tuple[int, str, str]], str, str] | None:
        with ctx.sessions() as session:
            if check_key and not still_valid(session, caller):
                return None
            rows = [(ev.id, ev.kind, json.dumps(ev.data)) for ev in repository.events_after(session, job_id, after)]
            job = service.get_job(session, job_id)
            return rows, job.state, json.dumps(JobOut.model_validate(job).model_dump(mode="json"))

    async def events() -> AsyncIterator[str]:
        last = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(timeout_s, ctx.settings.max_event_stream_s)
        next_key_check = loop.time() + KEY_RECHECK_S
        while True:
            check_key = loop.time() >= next_key_check
            if check_key:
                next_key_check = loop.time() + KEY_RECHECK_S
            polled = await run_in_threadpool(poll, last, check_key)
            if polled is None:
                yield f"event: error\ndata: {_revoked_error()}\n\n"
                return
            rows, state, final = polled
            for event_id, kind, data in rows:
                last = event_id
                yield f"id: {event_id}\nevent: {kind}\ndata: {data}\n\n"
            if state in FINISHED or loop.time() > deadline:
                yield f"event: state\ndata: {final}\n\n"
                return
            await asyncio.sleep(poll_s)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _revoked_error() -> str:
    return ErrorResponse(error=ErrorBody(code="unauthorized", message="the API key this stream was opened with was "
                                         "revoked")).model_dump_json()
