"""Which jobs are live (running, or finished but inside their linger window) and which node is
in which: the index the node table asks (``core.nodes.JobView``) and the supervisors wait on.

Owned by the dispatcher, which adds and retires jobs; the timers receive each new live job on
``spawned`` and run its supervisor. Nothing here decides or sends anything.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator

import trio

from appliance.core import jobfsm
from appliance.core.nodes import JobView, NodeKey
from appliance.core.state import State

ACTIVE = ("new", "ready", "running")  # a node in one of these is taken by its job


class LiveJobs:
    def __init__(self, state: State) -> None:
        self.state = state
        self.changed: dict[str, trio.Event] = {}  # job id -> "something changed" (its supervisor)
        self.node_jobs: dict[NodeKey, set[str]] = defaultdict(set)
        self.view = JobView(is_live=self.is_live, assignment=self.assignment)
        self._spawn_send, self.spawned = trio.open_memory_channel(math.inf)
        # told of every job that becomes live (True) or retires (False): the edges' copy
        self.on_change: Callable[[str, bool], None] | None = None

    def __contains__(self, job_id: str) -> bool:
        return job_id in self.changed

    def __iter__(self) -> Iterator[str]:
        """The live job ids."""
        return iter(self.changed)

    def is_live(self, job_id: str) -> bool:
        return job_id in self.changed

    def assignment(self, key: NodeKey) -> tuple[str, str] | None:
        for job_id in self.node_jobs.get(key, ()):
            job = self.state.jobs[job_id]
            status = job.nodes.get(key[1])
            if job.org == key[0] and status in ACTIVE and not jobfsm.job_finished(job):
                return (job_id, status)
        return None

    def jobs_of(self, key: NodeKey) -> list[jobfsm.Job]:
        """The live jobs where the node is still new, ready or running."""
        out = []
        for job_id in list(self.node_jobs.get(key, ())):
            job = self.state.jobs[job_id]
            if not jobfsm.job_finished(job) and job.nodes.get(key[1]) in ACTIVE:
                out.append(job)
        return out

    def add(self, job: jobfsm.Job) -> None:
        self.changed[job.id] = trio.Event()
        for name in job.nodes:
            self.node_jobs[(job.org, name)].add(job.id)
        self._spawn_send.send_nowait(job)
        if self.on_change is not None:
            self.on_change(job.id, True)

    def poke(self, job_id: str) -> None:
        """Wake the job's supervisor: its status or deadline may have changed."""
        event = self.changed.get(job_id)
        if event is not None:
            event.set()

    def wait_event(self, job_id: str) -> trio.Event:
        """A fresh event for the supervisor to wait on."""
        event = self.changed[job_id] = trio.Event()
        return event

    def retire(self, job: jobfsm.Job) -> None:
        self.changed.pop(job.id, None)
        if self.on_change is not None:
            self.on_change(job.id, False)
        for name in job.nodes:
            jobs = self.node_jobs.get((job.org, name))
            if jobs is not None:
                jobs.discard(job.id)
                if not jobs:
                    del self.node_jobs[(job.org, name)]
