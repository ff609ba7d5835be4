"""The training loss of a condensing job, as the points its progress reported and as a PNG plot."""
from __future__ import annotations

import io

from sqlalchemy.orm import Session

from service.condensing.schemas import LossPoint
from service.jobs import repository
from service.jobs.service import get_job


def loss_points(session: Session, job_id: str) -> list[LossPoint]:
    get_job(session, job_id)
    events = repository.events_of_kind(session, job_id, "progress")
    # Progress with a "phase" belongs to later stages (the evaluation card's fine-tuning), not to condensing.
    return [LossPoint(step=e.data["step"], loss=e.data["loss"]) for e in events
            if isinstance(e.data.get("loss"), (int, float)) and "step" in e.data and "phase" not in e.data]


def loss_png(job_id: str, points: list[LossPoint]) -> bytes:
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
