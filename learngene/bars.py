"""Progress bars (rich, on stderr) for downloads and jobs; nothing at all when stderr is not a terminal, so
scripts and logs stay clean. rich is imported only when a bar is actually drawn."""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def wanted(progress: bool | None) -> bool:
    """An explicit choice wins; otherwise a bar only on a terminal."""
    return sys.stderr.isatty() if progress is None else progress


@contextmanager
def transfer(description: str, total: int | None, done: int, show: bool) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n_bytes)``."""
    if not show:
        yield lambda n: None
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=_console()) as bar:
        task = bar.add_task(description, total=total, completed=done)
        yield lambda n: bar.advance(task, n)


@contextmanager
def job(description: str, show: bool) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Yields ``update(progress_event)``: a bar over ``step`` / ``total_steps`` with the loss, once the job
    reports steps; a spinner before that."""
    if not show:
        yield lambda event: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=_console()) as bar:
        task = bar.add_task(description, total=None, note="")

        def update(event: dict[str, Any]) -> None:
            note = event.get("phase") or event.get("state") or ""
            if isinstance(event.get("loss"), (int, float)):
                note = f"{note} loss {event['loss']:.4f}".strip()
            fields: dict[str, Any] = {"note": note}
            if isinstance(event.get("step"), int):
                fields["completed"] = event["step"]
            if isinstance(event.get("total_steps"), int):
                fields["total"] = event["total_steps"]
            bar.update(task, **fields)

        yield update


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)
