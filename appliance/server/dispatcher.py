"""The one place where the core's decisions become actions.

Every input — a node message (from the reactor), a timer (from ``server.timers``), a REST
request (create, abort, a deleted client) — comes here. The dispatcher asks the pure core
(``core.nodes`` for availability, ``core.jobfsm`` for jobs), logs what changed, publishes the
events and executes the effects from one FIFO queue. An effect that causes more effects (a node
going down fails its job, which sends another node to rehab, which sends it ``abort``) adds
them to the queue instead of calling back into whoever caused it, so no call stack crosses from
sockets to jobs and back. The queue is drained synchronously by the caller (one trio task at a
time: nothing here awaits), so a node message is answered without a task switch on the
heartbeat path.

Job steps are applied to the in-memory job by the FSM and then logged; nothing they change is
shown before it is on disk because every HTTP answer, SSE chunk and websocket message waits for
the log first (``server.durable``), in one place each, not at each call site.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import trio

from appliance.core import jobfsm, records, render
from appliance.core import nodes as corenodes
from appliance.core import output as coreoutput
from appliance.core.jobspec import JobSpec
from appliance.core.nodes import NodeKey
from appliance.core.render import sse_timestamp
from appliance.core.settings import Settings
from appliance.core.state import OrgEvent, State
from appliance.server.advertise import Advertiser
from appliance.server.clock import Clock
from appliance.server.feeds import END, Hub, Output
from appliance.server.livejobs import LiveJobs
from appliance.server.outputs import Outputs
from appliance.server.store import Store

if TYPE_CHECKING:  # psycopg is imported only with a PostgreSQL store
    from appliance.server.pgoutputs import PgOutputs

log = logging.getLogger("pushy.dispatch")


class Outbound(Protocol):
    """What the dispatcher needs from the sockets (``server.reactor.Reactor``)."""

    def send_to_node(self, key: NodeKey, body: dict[str, Any], now: float) -> bool: ...

    def forget(self, key: NodeKey) -> None: ...

    def keys_changed(self, key: NodeKey) -> None: ...

    def behind(self) -> bool: ...


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        state: State,
        store: Store,
        table: corenodes.NodeTable,
        outbound: Outbound,
        *,
        hub: Hub,
        clock: Clock,
        live: LiveJobs,
        advertiser: Advertiser,
        outputs: Outputs | PgOutputs | None = None,
    ) -> None:
        self.settings = settings
        self.outputs: Outputs | PgOutputs = outputs or Outputs(
            os.path.join(settings.state_dir, "output"), settings.max_output_bytes
        )
        self.state = state
        self.store = store
        self.table = table
        self.outbound = outbound
        self.hub = hub
        self.clock = clock
        self.live = live
        self.advertiser = advertiser  # its server_name goes into commits; a reload may change it
        self._queue: deque[tuple[float, jobfsm.Job | None, Any]] = deque()
        self._draining = False
        self.rehab_changed = trio.Event()  # set when a node enters rehab (the rehab timer's due)
        # what the websocket stream last said of each online node: 1 unavailable, 2 available
        self.announced: dict[NodeKey, int] = {}
        # bumped per org whenever a node's listed availability changes (node_states caches on it)
        self.availability_version: dict[str, int] = {}
        # a ``run`` that could not be sent (the node not reachable yet, e.g. just after a
        # restart): sent when the node is heard from again, so a committed node is not left
        # waiting for a run it never got (rolling jobs start nodes at any time)
        self._held_runs: dict[NodeKey, str] = {}
        # a rolling job's ``run``s wait until their ``run_sent`` is on disk (`send_synced_runs`):
        # a node that got ``run`` is then always counted in the window, even after a kill -9
        self._runs_after_sync: list[tuple[int, NodeKey, str]] = []
        self._runs_due = trio.Event()
        # told of each job as it finishes (GET /metrics: the job duration histogram)
        self.on_job_finished: Callable[[jobfsm.Job], None] | None = None

    # Inputs from the sockets and timers ------------------------------------------------------
    def node_message(self, key: NodeKey, address: bytes, body: dict[str, Any], now: float) -> None:
        """A message that passed the wire checks for ``key`` (the reactor's router loop)."""
        if body.get("type") == "output":  # live output: no business of the node table
            self._output(key, body, now)
            return
        self._run(None, self.table.on_message(key, address, body, now, self.live.view), now)
        self.announce(key, now)
        if key in self._held_runs:
            self._send_held_run(key, now)

    def _send_held_run(self, key: NodeKey, now: float) -> None:
        job = self._live_job(self._held_runs.pop(key), key)
        if job is None or job.status != "running" or job.nodes.get(key[1]) != "ready":
            return  # the job or the node moved on meanwhile
        self._send_run(job, key, now)

    def _send_run(self, job: jobfsm.Job, key: NodeKey, now: float) -> None:
        if not self.outbound.send_to_node(key, {"type": "run", "job_id": job.id}, now):
            log.debug("node %s/%s cannot be reached now: run of job %s held", *key, job.id)
            self._held_runs[key] = job.id

    def _output(self, key: NodeKey, body: dict[str, Any], now: float) -> None:
        try:
            chunk = coreoutput.parse_chunk(body)
        except coreoutput.ChunkError as exc:
            log.debug("output message of %s/%s dropped: %s", *key, exc)
            return
        # the node sends more once acknowledged (``client.liveoutput``): a chunk kept is
        # acknowledged (and shown) once it is on disk, any other one at once
        ack = {"type": "output_ack", "job_id": chunk.job_id, "stream": chunk.stream}
        ack["offset"] = chunk.offset + len(chunk.data)
        job = self._live_job(chunk.job_id, key)
        if job is None or not job.capture or key[1] not in job.nodes:
            log.debug("output of %s/%s for job %s dropped: no such capture", *key, chunk.job_id)
            self.outbound.send_to_node(key, ack, now)
            return
        errors = self.outputs.write_errors
        kept = self.outputs.take(job.id, key[1], chunk.stream, chunk.offset, chunk.data)
        if self.outputs.write_errors != errors:
            return  # not written: not acknowledged (the node sends it again, then gives up)

        def synced() -> None:
            later = self.clock.now()
            self.outbound.send_to_node(key, ack, later)
            if kept is not None:
                self._publish_output(job, key[1], chunk.stream, kept.offset, kept.text(), later)

        self.outputs.when_synced(synced)

    def _publish_output(
        self, job: jobfsm.Job, node: str, stream: str, offset: int, text: str, now: float
    ) -> None:
        data = {
            "timestamp": sse_timestamp(now),
            "node": node,
            "stream": stream,
            "offset": offset,
            "data": text,
        }
        item = Output(job.id, data)
        self.hub.publish_lossy(("job", job.id), item)
        self.hub.publish_lossy(("jobs", job.org), item)

    async def send_synced_runs(self) -> None:
        """Forever: send each rolling job's ``run`` once the record saying it was sent is on
        disk (an fsync later: a few ms on a window's pace of whole commands)."""
        while True:
            await self._runs_due.wait()
            self._runs_due = trio.Event()
            due, self._runs_after_sync = self._runs_after_sync, []
            try:
                await self.store.wait_synced(max(seq for seq, _, _ in due))
            except Exception as exc:  # a failing disk: nothing is sent until it is written
                log.warning("runs of rolling jobs wait for the event log: %s", exc)
                self._runs_after_sync[:0] = due
                await trio.sleep(1.0)
                self._runs_due.set()
                continue
            now = self.clock.now()
            for _, key, job_id in due:
                job = self._live_job(job_id, key)
                if job is not None and job.status == "running" and job.nodes.get(key[1]) == "ready":
                    self._send_run(job, key, now)

    def liveness_scan(self, now: float) -> None:
        self._run(None, self.table.scan(now), now)

    def rehab_timer(self, now: float) -> None:
        self._run(None, self.table.on_rehab_timer(now), now)

    def job_deadline(self, job: jobfsm.Job, now: float) -> None:
        """The job's voting or run timeout passed (its supervisor's timer)."""
        if jobfsm.job_finished(job):
            return
        if job.status == "voting":
            self.step(job, jobfsm.on_voting_timeout(job, now), now)
        elif job.status == "running":
            self.step(job, jobfsm.on_run_timeout(job, now), now)

    def job_crashed(self, job: jobfsm.Job, now: float, *, tell_nodes: bool = True) -> None:
        if jobfsm.job_finished(job):
            return
        step = jobfsm.crash(job, now)
        if not tell_nodes:
            step.effects.clear()
        self.step(job, step, now)

    def retire(self, job: jobfsm.Job) -> None:
        """The job's linger window is over: the feed ends and only a summary is kept."""
        self.live.retire(job)
        # Past the linger window the job feed only gives a summary: keep memory bounded by
        # the live jobs, not by history (a job's event list is rebuilt only if it resumes).
        job.events.clear()
        self.outputs.forget([job.id])
        self.hub.publish(("job", job.id), END)

    # Inputs from REST ------------------------------------------------------------------------
    async def create_job(
        self, org: str, org_guid: str, spec: JobSpec, requestor: str
    ) -> jobfsm.Job:
        """Make the job durable (its record and start step in one synced batch), then send
        the commits. The reducer makes the job from the records, as at replay; the FSM plans
        the start step on a copy made from the same record."""
        now = self.clock.now()
        job_id = render.make_job_id(org_guid, os.urandom(38))
        created = records.job_created(
            job_id=job_id,
            org=org,
            command=spec.command,
            nodes=list(spec.nodes),
            quorum=spec.quorum,
            run_timeout=spec.run_timeout,
            user=spec.user,
            dir=spec.dir,
            env=spec.env,
            file=spec.file,
            capture=spec.capture,
            requestor=requestor,
            t=now,
            max_concurrency=spec.max_concurrency,
            max_errors=spec.max_errors,
        )
        plan = records.job_of(created)
        unavailable = {name for name in spec.nodes if not self._available((org, name))}
        step = jobfsm.start(
            plan,
            unavailable,
            now,
            server_name=self.advertiser.server_name,
            voting_timeout=self.settings.voting_timeout,
        )
        org_events_before = self.state.org_event_count
        await self.store.durable([created, records.job_step(job_id, now, step.changes)])
        job = self.state.jobs[job_id]
        self.live.add(job)
        self._publish(job, 0, self._org_events_of(job, org_events_before))
        self._finished(job, step)  # e.g. quorum_failed at once: no node available
        self._run(job, step.effects, now)
        return job

    def abort(self, job: jobfsm.Job) -> int:
        """Abort a job; returns the log seq to wait for before answering."""
        now = self.clock.now()
        return self.step(job, jobfsm.abort(job, now), now)

    def drop_node(self, key: NodeKey) -> None:
        """The node's client was deleted: it is offline at once."""
        now = self.clock.now()
        self.outbound.keys_changed(key)  # its keys are gone: edges refuse its messages
        self._run(None, self.table.drop(key), now)

    # Inputs from edges (``server.edges``) -------------------------------------------------------
    def edge_down(self, key: NodeKey, address: bytes, reason: str, now: float) -> None:
        """The edge that holds the node saw it stop beating."""
        self._run(None, self.table.edge_down(key, address, reason), now)

    def edge_lost(self, prefix: bytes, now: float) -> None:
        """An edge died: its nodes are ghosts until they reconnect elsewhere."""
        for key in self.table.edge_lost(prefix, now):
            self.announce(key, now)

    # Resume after a restart ------------------------------------------------------------------
    def resume(self, now: float) -> None:
        """After a (re)start, before any node message: the nodes that were up wait a grace to
        speak again (ghosts), and the jobs that were live are supervised again."""
        for key, incarnation in self.state.up_nodes.items():
            self.table.restore(key, incarnation, now)
        linger = self.settings.wait_complete_time
        # a replay leaves the events unbuilt: only the jobs whose feed shows them get theirs
        self.store.settle_events(lambda job: jobfsm.shows_events(job, now, linger))
        for job in list(self.state.jobs.values()):
            if job.status == "new":
                # A crash tore its creation batch (job_created without the start step, or
                # --recover cut there): never acknowledged, never sent to a node. It would
                # stay "new" forever and hold its nodes; it is crashed instead.
                self.live.add(job)
                self.job_crashed(job, now, tell_nodes=False)  # its nodes never heard of it
            elif jobfsm.shows_events(job, now, linger):
                self.live.add(job)
            else:
                job.events.clear()  # past its linger window: the feed answers with a summary

    # Steps and effects -----------------------------------------------------------------------
    def step(self, job: jobfsm.Job, step: jobfsm.Step, now: float) -> int:
        """Log an FSM step the FSM already applied to ``job``, publish its events, queue its
        effects. Returns the seq of the step's record (0 when the step changed nothing)."""
        seq = 0
        if step.changes:
            seq = self.store.append(records.job_step(job.id, now, step.changes))
        first_new = len(job.events) - sum(1 for c in step.changes if c[0] == "event")
        for change in step.changes:
            if change[0] == "output":  # an original client's end-of-job capture
                _, node, stdout, stderr = change
                for stream, text in (("stdout", stdout), ("stderr", stderr)):
                    if text:
                        self._publish_output(job, node, stream, 0, text, now)
        self._publish(job, first_new, self.state.note_job_events(job, first_new))
        self._finished(job, step)
        self._run(job, step.effects, now)
        self.live.poke(job.id)
        return seq

    def _finished(self, job: jobfsm.Job, step: jobfsm.Step) -> None:
        """Tell ``on_job_finished`` of a job this step finished (a finished job's status never
        changes again, so each job is told once)."""
        if (
            self.on_job_finished is not None
            and jobfsm.job_finished(job)
            and any(change[0] == "status" for change in step.changes)
        ):
            self.on_job_finished(job)

    def _run(self, job: jobfsm.Job | None, effects: list, now: float) -> None:
        """Queue effects and, unless a drain is already under way further up, drain the queue."""
        if not effects:  # most heartbeats: nothing to do, nothing allocated
            return
        queue = self._queue
        for effect in effects:
            queue.append((now, job, effect))
        if self._draining:
            return
        self._draining = True
        try:
            while self._queue:
                at, of_job, effect = self._queue.popleft()
                self._execute(of_job, effect, at)
        finally:
            self._draining = False
            self._queue.clear()  # only a bug leaves anything here; it must not run later

    def _execute(self, job: jobfsm.Job | None, effect: Any, now: float) -> None:
        match effect:
            case corenodes.Send(key=key, type=kind):
                self.outbound.send_to_node(key, {"type": kind}, now)
                if kind == "abort":
                    self.rehab_changed.set()
            case corenodes.Up(key=key, incarnation=incarnation):
                log.info("node %s/%s is online", *key)
                self.store.record(records.node_up(key[0], key[1], incarnation))
            case corenodes.Down(key=key, reason=reason):
                log.info("node %s/%s is offline: %s", *key, reason)
                self.outbound.forget(key)
                self.store.record(records.node_down(key[0], key[1]))
                for down_job in self.live.jobs_of(key):
                    self.step(down_job, jobfsm.on_node_down(down_job, key[1], now), now)
                self.announce(key, now)
            case corenodes.ToJob(key=key, job_id=job_id, type=kind, body=body):
                to = self._live_job(job_id, key)
                if to is not None:
                    self.step(to, jobfsm.on_message(to, key[1], kind, body, now), now)
            case corenodes.LostJob(key=key, job_id=job_id):
                lost = self._live_job(job_id, key)
                if lost is not None and not jobfsm.job_finished(lost):
                    self.step(lost, jobfsm.on_node_lost_job(lost, key[1], now), now)
            case jobfsm.Send(node=node, body=body):
                assert job is not None
                if body["type"] == "run" and jobfsm.rolling(job):
                    seq = self.store.last_seq()  # the step's run_sent is in it
                    self._runs_after_sync.append((seq, (job.org, node), job.id))
                    self._runs_due.set()
                elif body["type"] == "run":
                    self._send_run(job, (job.org, node), now)
                else:
                    self.outbound.send_to_node((job.org, node), body, now)
            case jobfsm.Rehab(node=node):
                assert job is not None
                key = (job.org, node)
                self._run(None, self.table.do_rehab(key, now), now)
                self.announce(key, now)

    def _live_job(self, job_id: str, key: NodeKey) -> jobfsm.Job | None:
        job = self.state.jobs.get(job_id)
        if job is None or job.org != key[0] or job_id not in self.live:
            return None
        return job

    def _available(self, key: NodeKey) -> bool:
        node = self.table.online(key)
        return node is not None and node.available

    # Events ----------------------------------------------------------------------------------
    def _publish(self, job: jobfsm.Job, first_new: int, org_events: list[OrgEvent]) -> None:
        for event in job.events[first_new:]:
            self.hub.publish(("job", job.id), event)
            self.hub.publish(("jobs", job.org), (job.id, event))  # the websocket stream
        for org_event in org_events:
            self.hub.publish(("org", job.org), org_event)

    def _org_events_of(self, job: jobfsm.Job, after: int) -> list[OrgEvent]:
        """The org-feed events the reducer added for ``job`` since the count was ``after``."""
        found = []
        for event in reversed(self.state.org_events):
            if event.n <= after:
                break
            if event.data.get("job") == job.id:
                found.append(event)
        return found[::-1]

    def announce(self, key: NodeKey, now: float) -> None:
        """Publish the node's availability on ("nodes", org) if it changed since last said.

        Called after every message (the hot path): nothing is allocated when nothing changed."""
        node = self.table.nodes.get(key)
        code = 0 if node is None or node.ghost else 2 if node.state == "idle" else 1
        if self.announced.get(key, 0) == code:
            return
        if code:
            self.announced[key] = code
        else:
            del self.announced[key]
        self.availability_version[key[0]] = self.availability_version.get(key[0], 0) + 1
        self.hub.publish(
            ("nodes", key[0]),
            {
                "type": "node",
                "node": key[1],
                "availability": "available" if code == 2 else "unavailable",
                "status": "online" if code else "offline",
                "timestamp": sse_timestamp(now),
            },
        )
