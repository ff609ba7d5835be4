"""Every job kind of every domain: what the kernel (``service/jobs/``), which imports no domain, can run."""
from __future__ import annotations

from typing import Any

from service.jobs.kinds import JobKind


def all_kinds() -> dict[str, JobKind[Any]]:
    from service.condensing.tasks import CONDENSE
    from service.descendants.tasks import EXPAND

    return {kind.name: kind for kind in (EXPAND, CONDENSE)}
