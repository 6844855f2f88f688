"""The background job: deadlines on the service clock, paced in real time.

Every replica runs it; two replicas acting on the same deadline apply it once (the unit of
work's cause id is the referral and its deadline). The at-risk gauge is recounted here from
an index, so every replica reports the same figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from services.common.messaging import OUTAGE_ERRORS
from services.scheduling.service import Scheduler

log = logging.getLogger("pathway.scheduling.jobs")

Job = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


def deadline_job(scheduler: Scheduler, *, interval_s: float, at_risk_every_s: float) -> Job:
    async def job(stopping: asyncio.Event) -> None:
        counted_at = float("-inf")
        while not stopping.is_set():
            try:
                # A full batch means more are due: go again at once.
                while await scheduler.run_due() >= 100 and not stopping.is_set():
                    pass
                if time.monotonic() - counted_at >= at_risk_every_s:
                    await scheduler.refresh_at_risk()
                    counted_at = time.monotonic()
            except OUTAGE_ERRORS:
                log.warning("store unavailable; deadlines wait for it")
            except Exception:
                log.exception("deadline job failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=interval_s)

    return job
