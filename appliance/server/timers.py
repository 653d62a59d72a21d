"""The server's timers, and only its timers: each live job's supervisor (voting and run
timeouts, the linger window after the end), the liveness scanner and the rehab timer.

Deadlines are wall-clock times computed by the core from logged times ("voting started at T"),
turned into trio deadlines by the server's ``Clock``: under ``trio.testing.MockClock`` a test
drives every one of them. When a timer fires it calls the dispatcher, which decides and acts.
"""

from __future__ import annotations

import logging

import trio

from appliance.core import jobfsm
from appliance.core.settings import Settings
from appliance.server.clock import Clock
from appliance.server.dispatcher import Dispatcher
from appliance.server.scanner import watch_liveness

log = logging.getLogger("pushy.jobs")


class Timers:
    def __init__(self, settings: Settings, dispatcher: Dispatcher, clock: Clock) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.clock = clock

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise every job that becomes live (those resumed at start first), scan liveness
        and re-send rehab aborts until cancelled."""
        d = self.dispatcher
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._scanner)
            nursery.start_soon(self._rehab)
            task_status.started()
            async for job in d.live.spawned:
                nursery.start_soon(self._supervise, job)

    async def _supervise(self, job: jobfsm.Job) -> None:
        d, clock = self.dispatcher, self.clock
        try:
            while not jobfsm.job_finished(job):
                changed = d.live.wait_event(job.id)
                deadline = self._deadline(job)
                if deadline is None:
                    await changed.wait()
                    continue
                with trio.move_on_at(clock.trio_time(deadline)):
                    await changed.wait()
                now = clock.now()
                if now >= deadline:
                    d.job_deadline(job, now)
            await clock.sleep_until((job.finished_at or 0) + self.settings.wait_complete_time)
        except Exception:
            log.exception("job %s supervisor failed; marking it crashed", job.id)
            d.job_crashed(job, clock.now())
        finally:
            d.retire(job)

    def _deadline(self, job: jobfsm.Job) -> float | None:
        if job.status == "voting":
            return jobfsm.voting_deadline(job, self.settings.voting_timeout)
        if job.status == "running":
            return jobfsm.running_deadline(job)
        return None

    async def _scanner(self) -> None:
        d = self.dispatcher
        await watch_liveness(
            d.table.params.tick or d.table.params.interval / 4,
            lambda: self.settings.offline_scan_seconds,
            self.clock,
            d.table.attend,
            d.liveness_scan,
            d.outbound.behind,
        )

    async def _rehab(self) -> None:
        d = self.dispatcher
        while True:
            due = d.table.next_rehab_due()
            d.rehab_changed = changed = trio.Event()
            if due is None:
                await changed.wait()
                continue
            with trio.move_on_at(self.clock.trio_time(due)):
                await changed.wait()
            d.rehab_timer(self.clock.now())
