"""Waiting for background work from a request without holding a thread: the wait is an ``asyncio.sleep`` on
the event loop, and only each short database read goes through the thread pool, so a hundred clients waiting
on a slow job leave the pool (and ``/healthz``) to everyone else."""
from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.context import AppContext

FIRST_POLL_S = 0.01
#: The slowest poll: a waiting client learns the outcome at most this late, and costs one read this often.
LAST_POLL_S = 0.5


async def read(ctx: AppContext, query: Callable[[Session], object]) -> object:
    """One short read in the thread pool."""
    def run() -> object:
        with ctx.sessions() as session:
            return query(session)

    return await run_in_threadpool(run)


async def wait_until(ctx: AppContext, done: Callable[[Session], bool], timeout: float) -> bool:
    """Poll ``done`` (with a growing interval) until it holds or ``timeout`` passes; returns the last answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = FIRST_POLL_S
    while True:
        if await read(ctx, done):
            return True
        left = deadline - loop.time()
        if left <= 0:
            return False
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 2, LAST_POLL_S)
