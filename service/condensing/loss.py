"""The training loss of a condensing job, as the points its progress reported and as a PNG plot."""
from __future__ import annotations

import io
import threading
from collections import OrderedDict

from sqlalchemy.orm import Session

from service.condensing.schemas import LossPoint
from service.jobs import repository
from service.jobs.service import get_job
from service.keys.auth import Principal

#: What identifies one state of a job's loss curve: (job id, job state, last progress event id).
CurveState = tuple[str, str, int]


def loss_points(session: Session, job_id: str, caller: Principal) -> tuple[list[LossPoint], CurveState]:
    """The job's loss curve, when ``caller`` may see the job, and the state of it that these points are."""
    job = get_job(session, job_id, caller)
    events = repository.events_of_kind(session, job_id, "progress")
    state = (job_id, job.state, events[-1].id if events else 0)
    # Progress with a "phase" belongs to later stages (the evaluation card's fine-tuning), not to condensing.
    points = [LossPoint(step=e.data["step"], loss=e.data["loss"]) for e in events
              if isinstance(e.data.get("loss"), (int, float)) and "step" in e.data and "phase" not in e.data]
    return points, state


#: Plots rendered, by curve state: rendering costs 0.1-0.9 s of CPU, and an unchanged curve is asked for again
#: and again (a dashboard refreshing). The newest PLOTS_KEPT are kept (~30 KB each).
PLOTS_KEPT = 128
_plots: OrderedDict[CurveState, bytes] = OrderedDict()
_plots_lock = threading.Lock()


def loss_png(job_id: str, points: list[LossPoint], state: CurveState) -> bytes:
    """The curve as a PNG, rendered once per state of the job's progress."""
    with _plots_lock:
        png = _plots.get(state)
        if png is not None:
            _plots.move_to_end(state)
            return png
    png = _render(job_id, points)
    with _plots_lock:
        _plots[state] = png
        while len(_plots) > PLOTS_KEPT:
            _plots.popitem(last=False)
    return png


def _render(job_id: str, points: list[LossPoint]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot()
    if points:
        ax.plot([p.step for p in points], [p.loss for p in points], marker=".", linewidth=1)
    else:
        ax.text(0.5, 0.5, "no loss reported yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"job {job_id[:12]}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
