"""Background jobs of a service: a step repeated until the service stops.

Every replica runs the same jobs; their steps must be safe to run concurrently (claims,
conditional updates, or units of work with a cause id), so no job needs a leader.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from services.common.messaging import OUTAGE_ERRORS

log = logging.getLogger("pathway.jobs")

BackgroundJob = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
Step = Callable[[], Awaitable[object]]


async def repeat(
    step: Step,
    *,
    interval_s: float,
    stopping: asyncio.Event,
    name: str,
    wake: asyncio.Event | None = None,
) -> None:
    """Run `step` until `stopping`: again at once while it returns True (more work waits),
    otherwise after `interval_s`, or as soon as `wake` is set. A failing step is logged and
    tried again; an outage of the store or broker only waits for it to end."""
    while not stopping.is_set():
        busy = False
        try:
            busy = await step() is True
        except OUTAGE_ERRORS:
            log.warning("%s: store or broker unavailable; trying again", name)
        except Exception:
            log.exception("%s failed; trying again", name)
        if busy:
            await asyncio.sleep(0)
            continue
        waits = [asyncio.ensure_future(stopping.wait())]
        if wake is not None:
            waits.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waits, timeout=interval_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        if wake is not None:
            wake.clear()


def every(
    interval_s: float, step: Step, name: str, wake: asyncio.Event | None = None
) -> BackgroundJob:
    """A job for `runtime.background` that repeats `step` (see `repeat`)."""

    async def run(stopping: asyncio.Event) -> None:
        await repeat(step, interval_s=interval_s, stopping=stopping, name=name, wake=wake)

    return run
