"""Job supervision: creates jobs, feeds node inputs and timers to the job FSM, executes its effects.

Each live job has one supervisor task that owns its timers (re-armed from the logged times after
a restart) and its linger window; node inputs arrive synchronously from the reactor. Every FSM
step is logged as one ``job_step`` record before its effects (sends) go out.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import trio

from appliance.core import jobfsm, render
from appliance.core.jobspec import JobSpec
from appliance.core.nodes import JobView, NodeKey
from appliance.core.settings import Settings
from appliance.core.state import State, apply
from appliance.server.feeds import END, Hub

if TYPE_CHECKING:
    from appliance.server.advertise import Advertiser
    from appliance.server.reactor import Reactor
    from appliance.server.store import Store

log = logging.getLogger("pushy.jobs")
ACTIVE = ("new", "ready", "running")


class JobManager:
    def __init__(
        self,
        settings: Settings,
        state: State,
        store: Store,
        reactor: Reactor,
        advertiser: Advertiser,
    ) -> None:
        self.settings = settings
        self.state = state
        self.store = store
        self.reactor = reactor
        self.advertiser = advertiser  # its server_name goes into commits; a reload may change it
        self.hub = Hub()
        self.live: dict[str, trio.Event] = {}  # job id -> "something changed" for its supervisor
        self.node_jobs: dict[NodeKey, set[str]] = defaultdict(set)
        self.view = JobView(is_live=self.is_live, assignment=self.assignment)
        self._nursery: trio.Nursery | None = None

    # Queries ---------------------------------------------------------------------------------
    def is_live(self, job_id: str) -> bool:
        return job_id in self.live

    def assignment(self, key: NodeKey) -> tuple[str, str] | None:
        for job_id in self.node_jobs.get(key, ()):
            job = self.state.jobs[job_id]
            status = job.nodes.get(key[1])
            if job.org == key[0] and status in ACTIVE and not jobfsm.job_finished(job):
                return (job_id, status)
        return None

    # Lifecycle -------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            now = time.time()
            for job in self.state.jobs.values():
                if job.status == "new":
                    # A crash tore its creation batch (job_created without the start step, or
                    # --recover cut there): never acknowledged, never sent to a node. It would
                    # stay "new" forever and hold its nodes; it is crashed instead.
                    step = jobfsm.crash(job, now)
                    step.effects.clear()  # its nodes never heard of it: no rehab
                    self.step(job, step, now)
                if not jobfsm.job_finished(job):
                    self._spawn(job)
                elif job.finished_at and now - job.finished_at < self.settings.wait_complete_time:
                    self._spawn(job)
                else:
                    job.events.clear()  # past its linger window: the feed answers with a summary
            task_status.started()
            await trio.sleep_forever()

    def _spawn(self, job: jobfsm.Job) -> None:
        assert self._nursery is not None
        self.live[job.id] = trio.Event()
        for name in job.nodes:
            self.node_jobs[(job.org, name)].add(job.id)
        self._nursery.start_soon(self._supervise, job)

    async def _supervise(self, job: jobfsm.Job) -> None:
        try:
            while not jobfsm.job_finished(job):
                changed = self.live[job.id] = trio.Event()
                deadline = self._deadline(job)
                with trio.move_on_after(
                    max(0.0, deadline - time.time()) if deadline else float("inf")
                ):
                    await changed.wait()
                now = time.time()
                if deadline is not None and now >= deadline and not jobfsm.job_finished(job):
                    if job.status == "voting":
                        self.step(job, jobfsm.on_voting_timeout(job, now), now)
                    elif job.status == "running":
                        self.step(job, jobfsm.on_run_timeout(job, now), now)
            linger = self.settings.wait_complete_time - (time.time() - (job.finished_at or 0))
            await trio.sleep(max(0.0, linger))
        except Exception:
            log.exception("job %s supervisor failed; marking it crashed", job.id)
            if not jobfsm.job_finished(job):
                now = time.time()
                self.step(job, jobfsm.crash(job, now), now)
        finally:
            self.live.pop(job.id, None)
            # Past the linger window the job feed only gives a summary: keep memory bounded by
            # the live jobs, not by history (a job's event list is rebuilt only if it resumes).
            job.events.clear()
            for name in job.nodes:
                jobs = self.node_jobs.get((job.org, name))
                if jobs is not None:
                    jobs.discard(job.id)
                    if not jobs:
                        del self.node_jobs[(job.org, name)]
            self.hub.publish(("job", job.id), END)

    def _deadline(self, job: jobfsm.Job) -> float | None:
        if job.status == "voting":
            return jobfsm.voting_deadline(job, self.settings.voting_timeout)
        if job.status == "running":
            return jobfsm.running_deadline(job)
        return None

    # Inputs ----------------------------------------------------------------------------------
    async def create(self, org: str, org_guid: str, spec: JobSpec, requestor: str) -> jobfsm.Job:
        """Make the job durable (record + start step in one synced batch), then send commits."""
        now = time.time()
        job_id = render.make_job_id(org_guid, os.urandom(38))
        created = {
            "type": "job_created",
            "t": now,
            "job": {
                "id": job_id,
                "org": org,
                "command": spec.command,
                "nodes": list(spec.nodes),
                "quorum": spec.quorum,
                "run_timeout": spec.run_timeout,
                "user": spec.user,
                "dir": spec.dir,
                "env": spec.env,
                "file": spec.file,
                "capture": spec.capture,
                "requestor": requestor,
            },
        }
        scratch = State()
        apply(scratch, created)
        job = scratch.jobs[job_id]
        unavailable = {name for name in spec.nodes if not self._available((org, name))}
        step = jobfsm.start(
            job,
            unavailable,
            now,
            server_name=self.advertiser.server_name,
            voting_timeout=self.settings.voting_timeout,
        )
        org_events: list = []

        def insert() -> None:  # runs on the committer right after the sync
            self.state.jobs[job_id] = job
            org_events.extend(self.state.note_job_events(job, 0))

        await self.store.durable([created, self._step_record(job, step, now)], insert)
        self._spawn(job)
        for event in job.events:
            self.hub.publish(("job", job.id), event)
            self.hub.publish(("jobs", job.org), (job.id, event))  # the websocket stream
        for org_event in org_events:
            self.hub.publish(("org", job.org), org_event)
        self._execute(job, step, now)
        return job

    def _available(self, key: NodeKey) -> bool:
        node = self.reactor.table.online(key)
        return node is not None and node.available

    def abort(self, job: jobfsm.Job) -> int:
        """Abort a job; returns the log seq to wait for before answering."""
        now = time.time()
        return self.step(job, jobfsm.abort(job, now), now)

    def node_message(
        self, job_id: str, key: NodeKey, kind: str, body: dict[str, Any], now: float
    ) -> None:
        job = self.state.jobs.get(job_id)
        if job is None or job.org != key[0] or job_id not in self.live:
            return
        self.step(job, jobfsm.on_message(job, key[1], kind, body, now), now)

    def node_down(self, key: NodeKey, now: float) -> None:
        for job_id in list(self.node_jobs.get(key, ())):
            job = self.state.jobs[job_id]
            if not jobfsm.job_finished(job) and job.nodes.get(key[1]) in ACTIVE:
                self.step(job, jobfsm.on_node_down(job, key[1], now), now)

    def node_lost_job(self, job_id: str, key: NodeKey, now: float) -> None:
        job = self.state.jobs.get(job_id)
        if job is not None and job_id in self.live and not jobfsm.job_finished(job):
            self.step(job, jobfsm.on_node_lost_job(job, key[1], now), now)

    # Steps -----------------------------------------------------------------------------------
    def step(self, job: jobfsm.Job, step: jobfsm.Step, now: float) -> int:
        """Log an FSM step the FSM already applied to ``job``, publish its events, run its effects.

        Returns the seq of the step's log record (0 when the step changed nothing)."""
        seq = 0
        if step.changes:
            seq = self.store.append(self._step_record(job, step, now))
        new_events = len(job.events) - sum(1 for c in step.changes if c[0] == "event")
        self._publish(job, new_events)
        self._execute(job, step, now)
        return seq

    def _step_record(self, job: jobfsm.Job, step: jobfsm.Step, now: float) -> dict[str, Any]:
        return {"type": "job_step", "job": job.id, "t": now, "changes": step.changes}

    def _publish(self, job: jobfsm.Job, first_new: int) -> None:
        for event in job.events[first_new:]:
            self.hub.publish(("job", job.id), event)
            self.hub.publish(("jobs", job.org), (job.id, event))  # the websocket stream
        for org_event in self.state.note_job_events(job, first_new):
            self.hub.publish(("org", job.org), org_event)

    def _execute(self, job: jobfsm.Job, step: jobfsm.Step, now: float) -> None:
        for effect in step.effects:
            match effect:
                case jobfsm.Send(node=node, body=body):
                    self.reactor.send_to_node((job.org, node), body, now)
                case jobfsm.Rehab(node=node):
                    self.reactor.rehab((job.org, node), now)
        changed = self.live.get(job.id)
        if changed is not None:
            changed.set()
