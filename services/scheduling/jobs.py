"""The background job: deadlines on the service clock, paced in real time.

Every replica runs it; two replicas acting on the same deadline apply it once (the unit of
work's cause id is the referral and its deadline). The at-risk gauge is recounted here from
an index, so every replica reports the same figure.
"""

from __future__ import annotations

import logging
import time

from services.common.jobs import BackgroundJob, every
from services.scheduling.service import Scheduler

log = logging.getLogger("pathway.scheduling.jobs")


def deadline_job(
    scheduler: Scheduler, *, interval_s: float, at_risk_every_s: float
) -> BackgroundJob:
    counted_at = float("-inf")

    async def step() -> bool:
        nonlocal counted_at
        # A full batch means more are due: the job goes again at once.
        busy = await scheduler.run_due() >= 100
        if time.monotonic() - counted_at >= at_risk_every_s:
            await scheduler.refresh_at_risk()
            counted_at = time.monotonic()
        return busy

    return every(interval_s, step, "deadline job")
