"""Job-level helpers shared by the end-to-end job, SSE and restart tests.

``Node`` is a WireNode that heartbeats while a test waits and keeps what it receives; ``Fleet``
makes organizations and joined nodes per test; the job helpers post, read and drive jobs;
``Feed`` reads one SSE request in a background thread, keeping the raw lines.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from typing import Any

import httpx
import zmq

from tests.support import Chef, Server, WireNode, parse_sse, setup_org, wait_for

BEAT = 0.1  # seconds between a node's heartbeats while a test waits (server interval: 200 ms)
_org_numbers = itertools.count(1)


class Node(WireNode):
    """A WireNode that heartbeats on its own and keeps every message it receives.

    A thread sends its heartbeats every ``BEAT`` while ``beating`` (a test sets it False to play
    a dead node): they must not depend on how fast the test's own HTTP calls are, or a loaded
    machine makes the server rightly mark the node down mid-test. The socket is shared with the
    test's thread under a lock (ZeroMQ sockets may move between threads, never be used by two
    at once)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inbox: list[dict[str, Any]] = []
        self.last_beat = 0.0
        self.beating = True
        self.lock = threading.RLock()
        self._droppable = False  # the message being sent is a heartbeat
        self._beater: threading.Thread | None = None

    def connect(self, *, curve: bool = True) -> Node:
        with self.lock:
            super().connect(curve=curve)
            assert self.dealer is not None
            self.dealer.sndtimeo = 5000
        if self._beater is None or not self._beater.is_alive():
            self._beater = threading.Thread(
                target=self._beat, name=f"beat-{self.name}", daemon=True
            )
            self._beater.start()
        return self

    def close(self) -> None:
        """Close the sockets; the heartbeat thread ends with them (``connect`` starts another)."""
        with self.lock:
            super().close()

    def _beat(self) -> None:
        while True:
            time.sleep(BEAT / 2)
            with self.lock:
                if self.dealer is None:
                    return
                if self.beating and self.due():
                    self.send("heartbeat")

    def due(self) -> bool:
        if time.monotonic() - self.last_beat < BEAT:
            return False
        self.last_beat = time.monotonic()
        return True

    def send(self, kind: str, **extra: Any) -> None:
        with self.lock:
            self._droppable = kind == "heartbeat"
            try:
                super().send(kind, **extra)
            finally:
                self._droppable = False

    def send_frames(self, frames: list[bytes]) -> None:
        """A heartbeat never blocks: while the server is away the DEALER's small queue fills
        with them, and a real client's beats are dropped then too. Any other message waits
        for room (``sndtimeo``, 5 s) and fails the test rather than vanish: a result a test
        sends must reach the server, even right after a restart."""
        assert self.dealer is not None
        if not self._droppable:
            self.dealer.send_multipart(frames)  # zmq.Again after sndtimeo fails the test
            return
        try:
            self.dealer.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    def recv(
        self, timeout: float = 5.0, *, types: tuple[str, ...] | None = None
    ) -> dict[str, Any] | None:
        """As WireNode's, in short polls so that the heartbeat thread gets the socket between."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if self.dealer is None:
                    return None
                msg = super().recv(min(0.01, max(0.0, deadline - time.monotonic())), types=types)
            if msg is not None or time.monotonic() >= deadline:
                return msg

    def tick(self) -> None:
        """Heartbeat when due (the thread does too), then move what was received to the inbox."""
        with self.lock:
            if self.beating and self.dealer is not None and self.due():
                self.send("heartbeat")
        for _ in range(1000):
            msg = self.recv(0.003)
            if msg is None:
                break
            self.inbox.append(msg)

    def take(self, *types: str) -> list[dict[str, Any]]:
        """Remove and return the inbox messages of the given types."""
        found = [m for m in self.inbox if m["type"] in types]
        self.inbox = [m for m in self.inbox if m["type"] not in types]
        return found

    def expect(self, *types: str, seconds: float = 5.0, others: tuple[Node, ...] = ()) -> dict:
        """The first message of one of ``types`` (others stay in the inbox), heartbeating all."""
        deadline = time.monotonic() + seconds
        while True:
            for i, msg in enumerate(self.inbox):
                if msg["type"] in types:
                    return self.inbox.pop(i)
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {types} in {seconds} s; inbox {self.inbox}")
            for node in (self, *others):
                node.tick()

    def answer_abort(self, *, seconds: float = 5.0, others: tuple[Node, ...] = ()) -> dict:
        """Wait for an ``abort``, drop the job and answer ``aborted`` like the client does."""
        msg = self.expect("abort", seconds=seconds, others=others)
        self.idle()
        self.send("aborted", job_id=None)
        return msg

    def working(self, job_id: str, state: str) -> None:
        self.job_id, self.job_state = job_id, state

    def idle(self) -> None:
        self.job_id, self.job_state = None, "idle"

    def restart_client(self) -> None:
        """The client process restarted: a new incarnation on the same connection."""
        self.incarnation = str(uuid.uuid4())
        self.idle()


def pause(seconds: float, nodes: tuple[Node, ...]) -> None:
    """Let time pass while the nodes keep heartbeating."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for node in nodes:
            node.tick()
        time.sleep(0.02)


class Fleet:
    """Organizations and joined nodes for one test; closes its nodes at the end."""

    def __init__(self, server: Server, ctx: zmq.Context) -> None:
        self.server = server
        self.ctx = ctx
        self.nodes: list[Node] = []

    def org(self, names: tuple[str, ...] = (), prefix: str = "org") -> tuple[str, Chef, dict]:
        org = f"{prefix}{next(_org_numbers)}"
        admin, keys = setup_org(self.server, org, names)
        return org, admin, keys

    def node(self, org: str, name: str, key: str, *, join: bool = True) -> Node:
        node = Node(self.server, org, name, key, ctx=self.ctx)
        self.nodes.append(node)
        node.connect()
        if join:
            join_node(node)
        return node

    def setup(self, *names: str, prefix: str = "org") -> tuple[str, Chef, list[Node]]:
        """An org with the named nodes, all joined and available."""
        org, admin, keys = self.org(names, prefix)
        nodes = [self.node(org, n, keys[n], join=False) for n in names]
        for node in nodes:
            join_node(node, others=tuple(n for n in nodes if n is not node))
        return org, admin, nodes

    def close(self) -> None:
        for node in self.nodes:
            node.close()


def join_node(node: Node, others: tuple[Node, ...] = ()) -> None:
    """First contact: heartbeat until the opening abort, answer it, wait until available."""
    node.answer_abort(seconds=10, others=others)
    admin = node.chef
    path = f"/organizations/{node.org}/pushy/node_states/{node.name}"
    wait_for(
        lambda: admin.get(path).json().get("availability") == "available",
        nodes=(node, *others),
    )


def jobs_path(org: str, job_id: str = "") -> str:
    return f"/organizations/{org}/pushy/jobs" + (f"/{job_id}" if job_id else "")


def post_job(admin: Chef, org: str, nodes: list[str], command: str = "chef-client", **opts) -> str:
    r = admin.post(jobs_path(org), {"command": command, "nodes": nodes, **opts})
    assert r.status_code == 201, r.text
    job_id = r.json()["uri"].rsplit("/", 1)[1]
    assert len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)
    return job_id


def get_job(admin: Chef, org: str, job_id: str, query: str = "") -> dict[str, Any]:
    r = admin.get(jobs_path(org, job_id) + query)
    assert r.status_code == 200, r.text
    return r.json()


def wait_job(
    admin: Chef, org: str, job_id: str, status: str, nodes: tuple[Node, ...] = (), seconds=10
) -> dict[str, Any]:
    def done() -> dict | None:
        job = get_job(admin, org, job_id)
        return job if job["status"] == status else None

    return wait_for(done, seconds, nodes)


def wait_available(admin: Chef, org: str, node: Node, others: tuple[Node, ...] = ()) -> None:
    """Poll the node's state until it is available, the nodes heartbeating meanwhile.

    A job posted right after a node's ``aborted`` may reach the server first (the reply goes
    through an edge, the POST does not): the node is still in rehab then, so the job fails its
    quorum and sends the node ``abort`` again, as the original does."""
    path = f"/organizations/{org}/pushy/node_states/{node.name}"
    wait_for(lambda: admin.get(path).json()["availability"] == "available", nodes=(node, *others))


def assert_runs_a_new_job(admin: Chef, org: str, node: Node) -> None:
    """The node is usable: once available, a new job on it alone runs to success."""
    wait_available(admin, org, node)
    later = post_job(admin, org, [node.name])
    run_to_success(node, later)
    assert wait_job(admin, org, later, "complete", (node,))["nodes"] == {"succeeded": [node.name]}


def bare(job: dict[str, Any]) -> dict[str, Any]:
    """§10.2: the job JSON compared without id, created_at and updated_at."""
    return {k: v for k, v in job.items() if k not in ("id", "created_at", "updated_at")}


def job_events(admin: Chef, org: str, job_id: str) -> list[tuple[str, str, dict]]:
    return admin.sse(f"/organizations/{org}/pushy/job_status_feed/{job_id}", seconds=20)


def shape(events: list[tuple[str, str, dict]]) -> list[tuple]:
    """(name, node, status) per job event, None where the event has no such field. Live
    output events are left out: they carry no id and no state (test_live_output.py and
    test_jobs.py check them)."""
    return [
        (name, data.get("node"), data.get("status")) for name, _, data in events if name != "output"
    ]


def commit_and_run(node: Node, job_id: str, others: tuple[Node, ...] = ()) -> dict:
    """ack the commit and the run; returns the commit."""
    commit = node.expect("commit", others=others)
    assert commit["job_id"] == job_id
    node.working(job_id, "committed")
    node.send("ack_commit", job_id=job_id)
    run = node.expect("run", others=others)
    assert run["job_id"] == job_id
    node.working(job_id, "running")
    node.send("ack_run", job_id=job_id)
    return commit


def run_to_success(node: Node, job_id: str, **output: str) -> dict:
    commit = commit_and_run(node, job_id)
    node.send("succeeded", job_id=job_id, **output)
    node.idle()
    return commit


def finish_run(
    node: Node, job_id: str, others: tuple[Node, ...] = (), seconds: float = 5.0
) -> None:
    """Answer the run of an already committed node and succeed."""
    run = node.expect("run", others=others, seconds=seconds)
    assert run["job_id"] == job_id
    node.working(job_id, "running")
    node.send("ack_run", job_id=job_id)
    node.send("succeeded", job_id=job_id)
    node.idle()


SUCCESS = [
    ("start", None, None),
    ("quorum_vote", "n1", "success"),
    ("quorum_succeeded", None, None),
    ("run_start", "n1", None),
    ("run_complete", "n1", "success"),
    ("job_complete", None, "complete"),
]


class Feed(threading.Thread):
    """One SSE request read in the background; keeps the raw lines."""

    def __init__(
        self,
        server: Server,
        path: str,
        *,
        last_event_id: str | None = None,
        seconds: float = 20.0,
    ) -> None:
        super().__init__(daemon=True)
        self.chef = Chef(server.url, "pivotal", server.pivotal_key.read_bytes())
        self.path = path
        self.last_event_id = last_event_id
        self.seconds = seconds
        self.lines: list[str] = []
        self.response: httpx.Response | None = None
        self.ended_by_server = False
        self.error: BaseException | None = None
        self.opened = threading.Event()
        self.halt = threading.Event()

    def run(self) -> None:
        headers = {"Accept": "text/event-stream", **self.chef.headers("GET", self.path, b"")}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        deadline = time.monotonic() + self.seconds
        try:
            with self.chef.http.stream(
                "GET", self.path, headers=headers, timeout=self.seconds
            ) as r:
                self.response = r
                self.opened.set()
                if r.status_code != 200:
                    r.read()
                    return
                for line in r.iter_lines():
                    self.lines.append(line)
                    if self.halt.is_set() or time.monotonic() > deadline:
                        return
                self.ended_by_server = True
        except BaseException as exc:  # reported by finish()
            self.error = exc
        finally:
            self.opened.set()

    @property
    def events(self) -> list[tuple[str, str, dict]]:
        return list(parse_sse(iter(list(self.lines))))

    def begin(self) -> Feed:
        self.start()
        assert self.opened.wait(10), f"{self.path}: no response headers"
        assert self.response is not None, self.error
        assert self.response.status_code == 200, self.response.text
        return self

    def finish(self, seconds: float = 15.0) -> list[tuple[str, str, dict]]:
        """Wait for the server to end the stream; its events."""
        self.join(seconds)
        assert not self.is_alive(), f"{self.path}: the stream did not end; lines {self.lines}"
        assert self.error is None, self.error
        return self.events

    def stop(self, seconds: float = 5.0, nodes: tuple = ()) -> list[tuple[str, str, dict]]:
        """Hang up (the next keepalive or event wakes the reader); the events so far."""
        self.halt.set()
        wait_for(lambda: not self.is_alive(), seconds, nodes)
        assert self.error is None, self.error
        return self.events


def feed_path(org: str, job_id: str | None = None, plural: bool = False) -> str:
    name = "jobs_status_feed" if plural else "job_status_feed"
    return f"/organizations/{org}/pushy/{name}" + (f"/{job_id}" if job_id else "")
