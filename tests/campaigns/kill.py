"""Kill campaign: ``kill -9`` the server at random points under a mixed workload, N times.

A real server (tests/support.Server) and a fleet of real ``pushy client`` processes run
while a driver creates jobs over REST, reads them and their outputs back, aborts a few, and
changes identities through the Chef API (clients, users, org membership, groups). After a
random operation (right after its 201 / write ack, after a random delay while jobs vote and
run, or while a request is in flight) the server is killed with SIGKILL and started again on
the same state directory and ports, so the clients reconnect. After every restart the
checker compares the server with what clients were told:

* every job that got a 201 exists, with the fields read back right after the 201 unchanged
  (command, nodes, run_timeout, created_at, user, dir, env, capture_output, file; quorum
  and the rest of the ``start`` event from the job feed while the job is live);
* no job status and no node status within a job goes backwards (jobfsm's order: new,
  voting, running, then one finished status that never changes; a node: new, ready,
  running, then one terminal status);
* every output read over REST before is still readable and identical (and is what the
  command writes);
* every acknowledged identity change is still there;
* the server starts every time (never ``--recover``) and its log holds no corruption,
  recovery or traceback.

When the killing stops every job must finish within a bound, and the fleet must run a new
job on every node. Seeds make the choices reproducible; the timing of real processes is not.

Run ``python -m tests.campaigns.kill --kills 200 --seed 1``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from appliance.core.jobfsm import JOB_STATUSES, NODE_STATUSES
from tests.support import Chef, ClientFleet, Server, parse_sse

ORG = "killorg"
PORT_KEYS = ("api_port", "command_port", "server_heartbeat_port")

# Command -> (shell command, expected stdout, expected stderr)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "hello": ("echo hello", "hello\n", ""),
    "nap": ("sleep 0.2", "", ""),
    "fail": ("echo bad >&2; exit 3", "", "bad\n"),
    "write": ('printf "line %s\\n" 1 2 3; echo err >&2', "line 1\nline 2\nline 3\n", "err\n"),
    "slow": ("sleep 2; echo slow done", "slow done\n", ""),
}
WHITELIST = "{" + ", ".join(f"'{k}'=>'{v[0]}'" for k, v in COMMANDS.items()) + "}"
GHOST = "kc-ghost"  # a node name no client uses: unavailable in every job
STABLE_USERS = ("kc-stable-1", "kc-stable-2", "kc-stable-3")
GROUPS = ("kc-g1", "kc-g2", "kc-g3")
# Fields of GET /jobs/ID that never change once the 201 went out.
FIXED_FIELDS = (
    "id",
    "command",
    "run_timeout",
    "created_at",
    "user",
    "dir",
    "env",
    "capture_output",
    "file",
)
LOG_ALARMS = ("corrupt", "recovering", "Traceback", "supervisor failed")

# ---------------------------------------------------------------------------------------------
# What clients were told, and the pure checks against it


def job_rank(status: str) -> int:
    """jobfsm's order: new < voting < running < any finished status."""
    assert status in JOB_STATUSES, status
    return min(JOB_STATUSES.index(status), 3)


def node_rank(status: str) -> int:
    """new < ready < running < any terminal status."""
    assert status in NODE_STATUSES, status
    return min(NODE_STATUSES.index(status), 3)


@dataclass
class JobTold:
    id: str
    request: dict[str, Any]
    created: dict[str, Any]  # the 201 body
    readback: dict[str, Any]  # GET /jobs/ID?include_file=true right after the 201
    events: dict[str, tuple[str, dict]] = field(default_factory=dict)  # SSE id -> (name, data)
    status: str = "new"  # last seen
    nodes: dict[str, str] = field(default_factory=dict)  # node -> last seen status
    outputs: dict[tuple[str, str], bytes] = field(default_factory=dict)


@dataclass
class Told:
    org: str
    jobs: dict[str, JobTold] = field(default_factory=dict)
    # key -> ("equal", path, body) | ("present", path) | ("absent", path)
    #        | ("member", path, username)
    identity: dict[str, tuple] = field(default_factory=dict)
    identity_changes: int = 0


def node_statuses(nodes: dict[str, list[str]]) -> dict[str, str]:
    """GET /jobs/ID ``nodes`` (status -> names) as name -> status."""
    return {name: status for status, names in nodes.items() for name in names}


def observe_job(told: JobTold, detail: dict[str, Any], where: str) -> list[str]:
    """Compare a GET /jobs/ID (or a GET /jobs summary, without ``nodes``) with what was told;
    then remember it as the last seen state."""
    out = []
    for key in FIXED_FIELDS:
        if key == "file" and "file" not in detail and "file_specified" in detail:
            continue  # a summary without include_file
        if detail.get(key) != told.readback.get(key):
            out.append(
                f"{where}: job {told.id} {key} is {detail.get(key)!r}, "
                f"was {told.readback.get(key)!r}"
            )
    status = detail["status"]
    if job_rank(status) < job_rank(told.status) or (
        job_rank(status) == 3 and job_rank(told.status) == 3 and status != told.status
    ):
        out.append(f"{where}: job {told.id} status went back from {told.status} to {status}")
    told.status = status  # after a violation too: each is reported once
    if "nodes" in detail:
        nodes = node_statuses(detail["nodes"])
        if sorted(nodes) != sorted(told.request["nodes"]):
            out.append(
                f"{where}: job {told.id} nodes are {sorted(nodes)}, "
                f"were {sorted(told.request['nodes'])}"
            )
        for name, now in nodes.items():
            before = told.nodes.get(name, "new")
            if node_rank(now) < node_rank(before) or (
                node_rank(now) == 3 and node_rank(before) == 3 and now != before
            ):
                out.append(f"{where}: job {told.id} node {name} went back from {before} to {now}")
            told.nodes[name] = now
    return out


def observe_output(
    told: JobTold, node: str, channel: str, status_code: int, content: bytes, where: str
) -> list[str]:
    """An output once read must stay readable and identical; it must be what the command
    writes."""
    key = (node, channel)
    before = told.outputs.get(key)
    if before is not None:
        if status_code != 200:
            return [f"{where}: job {told.id} {node} {channel} was readable, now {status_code}"]
        if content != before:
            return [f"{where}: job {told.id} {node} {channel} is {content!r}, was {before!r}"]
        return []
    if status_code != 200:
        return []
    expected = COMMANDS[told.request["command"]][1 if channel == "stdout" else 2]
    told.outputs[key] = content
    if content != expected.encode():
        return [f"{where}: job {told.id} {node} {channel} is {content!r}, expected {expected!r}"]
    return []


def first_readback(job: JobTold, detail: dict[str, Any], where: str) -> list[str]:
    """The first GET of a job after its 201: the fields must be what was POSTed; from now on
    they must never change."""
    body = job.request
    job.readback = {k: detail.get(k) for k in FIXED_FIELDS}
    expected = {
        "id": job.id,
        "command": body["command"],
        "run_timeout": body.get("run_timeout", detail.get("run_timeout")),
        "created_at": detail.get("created_at"),
        "user": body.get("user"),
        "dir": body.get("dir"),
        "env": body.get("env"),
        "capture_output": True if body.get("capture_output") else None,
        "file": body.get("file"),
    }
    out = []
    if job.readback != expected:
        out.append(f"{where}: job {job.id} read back {job.readback}, posted {body}")
    return out + observe_job(job, detail, where)


def check_log_text(text: str, where: str) -> list[str]:
    """Lines of the server log that say the log was damaged, recovered, or code failed."""
    return [
        f"{where}: server log: {line.strip()[:300]}"
        for line in text.splitlines()
        if any(alarm in line for alarm in LOG_ALARMS)
    ]


# ---------------------------------------------------------------------------------------------
# The checker (reads the live server)


@dataclass
class CheckCounts:
    jobs: int = 0
    outputs: int = 0
    identity: int = 0
    events: int = 0


def jobs_path(org: str, job_id: str = "") -> str:
    return f"/organizations/{org}/pushy/jobs" + (f"/{job_id}" if job_id else "")


def read_feed(api: Chef, org: str, job_id: str, seconds: float = 0.5) -> list[tuple] | None:
    """The job feed (name, id, data) from its first event: the whole backlog, then what
    arrives until the feed is idle for ``seconds`` or the job completes (or a 5 s cap, which
    marks the read as partial with a trailing ``None``); None once the job is past its
    linger window (only a summary)."""
    path = f"/organizations/{org}/pushy/job_status_feed/{job_id}"
    headers = {"Accept": "text/event-stream", **api.headers("GET", path, b"")}
    events: list[Any] = []
    cap = time.monotonic() + 5
    timeout = httpx.Timeout(10, read=seconds)
    try:
        with api.http.stream("GET", path, headers=headers, timeout=timeout) as r:
            if r.status_code != 200:
                raise AssertionError(f"GET {path}: {r.status_code}")
            for event in parse_sse(r.iter_lines()):
                events.append(event)
                if event[0] in ("job_complete", "summary"):
                    break
                if time.monotonic() > cap:
                    events.append(None)
                    break
    except httpx.ReadTimeout:
        # idle: the backlog and everything after it were read; unless nothing came at all (a
        # feed starts with its backlog, so the server was only slow to answer): partial
        if not events:
            events.append(None)
    except (httpx.ReadError, httpx.RemoteProtocolError):
        events.append(None)  # cut by a kill: what arrived was seen all the same
    if events and events[0] is not None and events[0][0] == "summary":
        return None
    return events


def observe_feed(told: JobTold, events: list[Any], where: str) -> list[str]:
    """An SSE id once seen always names the same event and stays in the job's history (a
    read from the start that was not cut short holds every event the server has)."""
    out = []
    partial = bool(events) and events[-1] is None
    # live output events carry no id (never replayed): only job events are held to this
    read = {e[1]: (e[0], e[2]) for e in events if e is not None and e[1]}
    for ident, seen in told.events.items():
        if ident in read and read[ident] != seen:
            out.append(f"{where}: job {told.id} event {ident} is {read[ident]}, was {seen}")
        elif ident not in read and not partial:
            out.append(f"{where}: job {told.id} event {ident} {seen} is gone")
    for ident, event in read.items():
        told.events.setdefault(ident, event)
    return out


def check_job(api: Chef, told: Told, job: JobTold, where: str, counts: CheckCounts) -> list[str]:
    r = api.get(jobs_path(told.org, job.id) + "?include_file=true")
    if r.status_code != 200:
        return [f"{where}: job {job.id} got a 201 but GET answers {r.status_code} {r.text[:200]}"]
    counts.jobs += 1
    if not job.readback:  # the kill came between the 201 and its read back
        out = first_readback(job, r.json(), where)
    else:
        out = observe_job(job, r.json(), where)
    wanted = set(job.outputs)
    if job.request.get("capture_output"):  # outputs not read yet: read them now
        wanted |= {
            (node, channel)
            for node, status in job.nodes.items()
            if status in ("succeeded", "failed")
            for channel in ("stdout", "stderr")
        }
    for node, channel in sorted(wanted):
        o = api.get(
            f"{jobs_path(told.org, job.id)}/output/{node}/{channel}",
            headers={"Accept": "application/octet-stream"},
        )
        counts.outputs += 1
        out += observe_output(job, node, channel, o.status_code, o.content, where)
    if job.events:
        events = read_feed(api, told.org, job.id, seconds=0.2)
        if events is not None:
            counts.events += len(events)
            out += observe_feed(job, events, where)
    return out


def check_identity(api: Chef, key: str, expect: tuple, where: str) -> list[str]:
    kind, path = expect[0], expect[1]
    r = api.get(path)
    if kind == "equal":
        if r.status_code != 200 or r.json() != expect[2]:
            return [
                f"{where}: {key}: GET {path} is {r.status_code} {r.text[:200]}, was {expect[2]}"
            ]
    elif kind == "present":
        if r.status_code != 200:
            return [
                f"{where}: {key}: acknowledged, but GET {path} is {r.status_code} {r.text[:200]}"
            ]
    elif kind == "absent":
        if r.status_code != 404:
            return [f"{where}: {key}: deleted, but GET {path} is {r.status_code} {r.text[:200]}"]
    elif kind == "member":
        names = [u["user"]["username"] for u in r.json()] if r.status_code == 200 else []
        if expect[2] not in names:
            return [f"{where}: {key}: {expect[2]} is not in GET {path} ({r.status_code} {names})"]
    return []


def check_told(api: Chef, told: Told, where: str = "check") -> tuple[list[str], CheckCounts]:
    """Every invariant against the running server: (violations, counts of what was checked)."""
    counts = CheckCounts()
    violations: list[str] = []
    for job in list(told.jobs.values()):
        violations += check_job(api, told, job, where, counts)
    for key, expect in list(told.identity.items()):
        counts.identity += 1
        violations += check_identity(api, key, expect, where)
    return violations, counts


# ---------------------------------------------------------------------------------------------
# The workload


class Killed(Exception):
    """A request failed because the server is gone (killed mid-request)."""


class Driver:
    """Random operations against the server, recording everything it was told."""

    def __init__(self, rng: random.Random, told: Told, nodes: list[str]) -> None:
        self.rng = rng
        self.told = told
        self.nodes = nodes
        self.api: Chef | None = None
        self.violations: list[str] = []
        self.counter = 0
        self.jobs_created = 0
        self.aborts = 0
        self.reads = 0
        # churn identities: name -> "present" / "absent" / "unknown" (an unanswered change)
        self.clients: dict[str, str] = {}
        self.users: dict[str, str] = {}
        self.members: set[str] = set()
        self.keys: dict[str, str] = {}  # "USER.key-N" -> like clients
        self.groups: dict[str, str] = {}

    # plumbing ---------------------------------------------------------------------------------
    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        assert self.api is not None
        try:
            return self.api.request(method, path, body, **kw)
        except httpx.TransportError as exc:
            raise Killed(str(exc)) from exc

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"

    def acknowledged(self, key: str, expect: tuple) -> None:
        self.told.identity[key] = expect
        self.told.identity_changes += 1

    def readback(self, key: str, path: str) -> None:
        """The change was acknowledged: it must exist from now on; read back, it must stay
        exactly as read (if the read back is cut by the kill, existence is checked)."""
        self.acknowledged(key, ("present", path))
        r = self.call("GET", path)
        if r.status_code != 200:
            self.violations.append(f"readback of acknowledged {key}: GET {path} is {r.status_code}")
            return
        self.told.identity[key] = ("equal", path, r.json())

    # operations -------------------------------------------------------------------------------
    def op(self, kind: str | None = None) -> str:
        """Run one operation (a random one unless ``kind``); returns its kind."""
        kinds = ("create_job", "read_job", "list_jobs", "identity", "abort", "feed")
        weights = (35, 30, 5, 25, 5, 10)
        kind = kind or self.rng.choices(kinds, weights)[0]
        getattr(self, kind)()
        return kind

    def create_job(self) -> None:
        rng = self.rng
        command = rng.choice(list(COMMANDS))
        nodes = rng.sample(self.nodes, rng.randint(1, len(self.nodes)))
        if rng.random() < 0.15:
            nodes.append(GHOST)
        body: dict[str, Any] = {"command": command, "nodes": nodes}
        if rng.random() < 0.8:
            body["quorum"] = rng.randint(1, len(nodes))
        if rng.random() < 0.8:
            body["run_timeout"] = rng.randint(6, 20)
        if rng.random() < 0.8:
            body["capture_output"] = True
        if rng.random() < 0.3:
            body["env"] = {"KC_ROUND": str(self.counter), "KC_TEXT": "a b"}
        if rng.random() < 0.2:
            body["dir"] = "/tmp"
        if rng.random() < 0.1:
            body["file"] = "raw:#!/bin/sh\necho from file\n"
        r = self.call("POST", jobs_path(self.told.org), body)
        if r.status_code != 201:
            self.violations.append(f"POST /jobs answered {r.status_code} {r.text[:200]}")
            return
        created = r.json()
        job_id = created["id"]
        self.jobs_created += 1
        job = JobTold(id=job_id, request=body, created=created, readback={})
        self.told.jobs[job_id] = job  # told: from here on it must exist
        g = self.call("GET", jobs_path(self.told.org, job_id) + "?include_file=true")
        if g.status_code != 200:
            self.violations.append(f"job {job_id}: 201, then GET answered {g.status_code}")
            return
        self.violations += first_readback(job, g.json(), "readback")
        if self.rng.random() < 0.5:
            events = self.feed_of(job, seconds=0.1)
            if events and events[0] is not None:
                name, ident, data = events[0]
                want = {
                    "command": command,
                    "run_timeout": job.readback.get("run_timeout"),
                    "quorum": body.get("quorum", len(nodes)),
                    "node_count": len(nodes),
                }
                got = {k: data.get(k) for k in want}
                if got != want or (name, ident) != ("start", "job-1"):
                    self.violations.append(f"job {job_id}: first event {events[0]}, want {want}")

    def feed_of(self, job: JobTold, seconds: float) -> list[tuple] | None:
        try:
            events = read_feed(self.api, self.told.org, job.id, seconds)
        except (httpx.TransportError, AssertionError) as exc:
            raise Killed(str(exc)) from exc
        if events is not None:
            self.violations += observe_feed(job, events, "feed")
        return events

    def feed(self) -> None:
        """Follow a recent job's feed for a moment (its events are told too)."""
        recent = [j for j in list(self.told.jobs.values())[-8:] if j.readback]
        if recent:
            self.feed_of(self.rng.choice(recent), seconds=self.rng.uniform(0.05, 0.6))

    def read_job(self) -> None:
        if not self.told.jobs:
            return
        recent = list(self.told.jobs.values())[-12:]
        job = self.rng.choice(recent)
        r = self.call("GET", jobs_path(self.told.org, job.id) + "?include_file=true")
        self.reads += 1
        if r.status_code != 200:
            self.violations.append(f"read: job {job.id} GET answered {r.status_code}")
            return
        self.violations += (observe_job if job.readback else first_readback)(job, r.json(), "read")
        if not job.request.get("capture_output"):
            return
        for node, status in job.nodes.items():
            if status not in ("succeeded", "failed"):
                continue
            for channel in ("stdout", "stderr"):
                o = self.call(
                    "GET",
                    f"{jobs_path(self.told.org, job.id)}/output/{node}/{channel}",
                    headers={"Accept": "application/octet-stream"},
                )
                if o.status_code != 200:
                    self.violations.append(
                        f"read: job {job.id} node {node} {status} with capture_output, "
                        f"but its {channel} is {o.status_code}"
                    )
                self.violations += observe_output(
                    job, node, channel, o.status_code, o.content, "read"
                )

    def list_jobs(self) -> None:
        r = self.call("GET", jobs_path(self.told.org))
        if r.status_code != 200:
            self.violations.append(f"GET /jobs answered {r.status_code}")
            return
        for summary in r.json():
            job = self.told.jobs.get(summary["id"])
            if job is not None and job.readback:
                self.violations += observe_job(job, summary, "list")

    def abort(self) -> None:
        live = [j for j in self.told.jobs.values() if j.status in ("new", "voting", "running")]
        if not live:
            return
        job = self.rng.choice(live[-5:])
        r = self.call("POST", f"{jobs_path(self.told.org, job.id)}/abort")
        if r.status_code == 200:
            self.aborts += 1
            if job.readback:
                self.violations += observe_job(job, r.json(), "abort")
            if job.status != "aborted":
                self.violations.append(f"abort of {job.id} answered 200 with {job.status}")
        elif r.status_code != 409:  # 409: it finished meanwhile
            self.violations.append(f"abort of {job.id} answered {r.status_code} {r.text[:200]}")

    def identity(self) -> None:
        kinds = ("client", "user", "member", "key", "group_put", "group")
        getattr(self, "id_" + self.rng.choice(kinds))()

    def _create_or_delete(
        self,
        table: dict[str, str],
        prefix: str,
        create: Callable[[str], httpx.Response],
        path: Callable[[str], str],
        key: str,
    ) -> None:
        present = [n for n, s in table.items() if s == "present"]
        if present and self.rng.random() < 0.4:
            name = self.rng.choice(present)
            table[name] = "unknown"
            self.told.identity.pop(f"{key}:{name}", None)
            r = self.call("DELETE", path(name))
            if r.status_code != 200:
                self.violations.append(
                    f"DELETE {path(name)} answered {r.status_code} {r.text[:200]}"
                )
                return
            table[name] = "absent"
            self.acknowledged(f"{key}:{name}", ("absent", path(name)))
            return
        name = self.name(prefix)
        table[name] = "unknown"
        r = create(name)
        if r.status_code != 201:
            self.violations.append(f"create {key} {name} answered {r.status_code} {r.text[:200]}")
            return
        table[name] = "present"
        self.readback(f"{key}:{name}", path(name))

    def id_client(self) -> None:
        org = self.told.org
        self._create_or_delete(
            self.clients,
            "kc-client",
            lambda n: self.call(
                "POST", f"/organizations/{org}/clients", {"name": n, "create_key": True}
            ),
            lambda n: f"/organizations/{org}/clients/{n}",
            "client",
        )

    def id_user(self) -> None:
        """A new user (the appliance's Chef API has no user deletion)."""
        name = self.name("kc-user")
        self.users[name] = "unknown"
        r = self.call("POST", "/users", {"username": name, "create_key": True})
        if r.status_code != 201:
            self.violations.append(f"create user {name} answered {r.status_code} {r.text[:200]}")
            return
        self.users[name] = "present"
        self.readback(f"user:{name}", f"/users/{name}")

    def id_key(self) -> None:
        """Add a key to a user, or delete one added before."""
        users = [n for n, s in self.users.items() if s == "present"] + list(STABLE_USERS)
        user = self.rng.choice(users)
        self._create_or_delete(
            self.keys,
            f"{user}.key",
            lambda n: self.call(
                "POST", f"/users/{n.split('.key')[0]}/keys", {"name": n, "create_key": True}
            ),
            lambda n: f"/users/{n.split('.key')[0]}/keys/{n}",
            "key",
        )

    def id_member(self) -> None:
        org = self.told.org
        free = [n for n, s in self.users.items() if s == "present" and n not in self.members]
        if not free:
            return self.id_user()
        name = self.rng.choice(free)
        self.members.add(name)
        r = self.call("POST", f"/organizations/{org}/users", {"username": name})
        if r.status_code != 201:
            self.violations.append(f"associate {name} answered {r.status_code} {r.text[:200]}")
            return
        self.acknowledged(f"member:{name}", ("member", f"/organizations/{org}/users", name))

    def id_group_put(self) -> None:
        org = self.told.org
        group = self.rng.choice(GROUPS)
        users = self.rng.sample(STABLE_USERS, self.rng.randint(0, len(STABLE_USERS)))
        clients = self.rng.sample(self.nodes, self.rng.randint(0, len(self.nodes)))
        path = f"/organizations/{org}/groups/{group}"
        self.told.identity.pop(f"group:{group}", None)
        r = self.call("PUT", path, {"users": users, "clients": clients, "groups": []})
        if r.status_code != 200:
            self.violations.append(f"PUT {path} answered {r.status_code} {r.text[:200]}")
            return
        self.readback(f"group:{group}", path)

    def id_group(self) -> None:
        org = self.told.org
        self._create_or_delete(
            self.groups,
            "kc-churn",
            lambda n: self.call("POST", f"/organizations/{org}/groups", {"groupname": n}),
            lambda n: f"/organizations/{org}/groups/{n}",
            "group",
        )


# ---------------------------------------------------------------------------------------------
# The campaign


@dataclass
class Summary:
    seed: int
    kills: int = 0
    kills_with_live_jobs: int = 0  # kills while a job was last seen new/voting/running
    jobs_created: int = 0
    jobs_checked: int = 0
    outputs_checked: int = 0
    outputs_seen: int = 0
    identity_changes: int = 0
    identity_checked: int = 0
    events_checked: int = 0
    aborts: int = 0
    reads: int = 0
    torn_tails: int = 0
    snapshots: int = 0
    edge_kills: int = 0  # kill -9 of an edge process (the server restarts it) instead
    seconds: float = 0.0
    violations: list[str] = field(default_factory=list)
    workdir: str = ""

    def line(self) -> str:
        return (
            f"seed {self.seed}: {self.kills} kills survived ({self.edge_kills} of an edge, "
            f"{self.kills_with_live_jobs} with live jobs), {self.jobs_created} jobs created, "
            f"{self.jobs_checked} job checks, {self.outputs_seen} outputs "
            f"({self.outputs_checked} output checks), {self.identity_changes} identity changes "
            f"({self.identity_checked} checks), {self.events_checked} SSE events checked, "
            f"{self.aborts} aborts, {self.snapshots} snapshots, "
            f"{self.torn_tails} torn tails cut, {len(self.violations)} violations, "
            f"{self.seconds:.0f} s"
        )


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Campaign:
    def __init__(
        self,
        *,
        kills: int,
        seed: int,
        nodes: int = 4,
        workdir: Path,
        heartbeat_interval: int = 300,
        max_ops: int = 8,
        max_delay: float = 0.6,
        max_seconds: float = 3600.0,
        segment_max_bytes: int = 256 * 1024,
        edge_share: float = 0.0,
        progress: Callable[[str], None] = _stderr,
    ) -> None:
        self.kills = kills
        self.edge_share = edge_share  # the share of kills aimed at an edge process
        self.rng = random.Random(seed)
        self.summary = Summary(seed=seed, workdir=str(workdir))
        self.node_names = [f"kc-node{i}" for i in range(1, nodes + 1)]
        self.workdir = workdir
        self.max_ops = max_ops
        self.max_delay = max_delay
        self.deadline = time.monotonic() + max_seconds
        self.progress = progress
        self.server = Server(
            workdir / "state",
            heartbeat_interval=heartbeat_interval,
            voting_timeout=2,
            wait_complete_time=10,  # job feeds keep their events a while: compared across kills
            keep_alive_time=1,
            log_segment_max_bytes=segment_max_bytes,  # snapshots now and then, kills among them
        )
        self.told = Told(org=ORG)
        self.driver = Driver(self.rng, self.told, self.node_names)
        self.fleet: ClientFleet | None = None
        self.log_offset = 0
        self.edge_target: int | None = None

    # setup ------------------------------------------------------------------------------------
    def api(self) -> Chef:
        """A fresh superuser client (a new connection pool: the old one's peer is dead)."""
        return Chef(self.server.url, "pivotal", self.server.pivotal_key.read_bytes())

    def setup(self) -> None:
        self.server.start()
        self.populate(ClientFleet(self.server, ORG, self.workdir / "clients"))

    def populate(self, fleet: ClientFleet) -> None:
        """The fleet's clients, the stable users and groups; every node available."""
        self.fleet = fleet
        for name in self.node_names:
            fleet.add(name, whitelist=WHITELIST)
        admin = self.api()
        for user in STABLE_USERS:
            r = admin.post("/users", {"username": user, "create_key": True})
            assert r.status_code == 201, r.text
            r = admin.post(f"/organizations/{ORG}/users", {"username": user})
            assert r.status_code == 201, r.text
        for group in GROUPS:
            r = admin.post(f"/organizations/{ORG}/groups", {"groupname": group})
            assert r.status_code == 201, r.text
        self.fleet.wait_available(*self.node_names, seconds=60)
        self.driver.api = admin

    # one kill ---------------------------------------------------------------------------------
    def kill_now(self) -> None:
        assert self.server.proc is not None
        try:
            os.kill(self.edge_target or self.server.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def edges(self) -> list[dict]:
        r = httpx.get(f"{self.server.url}/pushy/_status?counters=true", timeout=10)
        return r.json()["counters"].get("edges", [])

    def aim(self) -> None:
        """Aim the next kill at the server, or (``edge_share`` of the time) at one of its edges."""
        self.edge_target = None
        if self.edge_share and self.rng.random() < self.edge_share:
            pids = sorted(e["pid"] for e in self.edges() if e.get("pid") and not e["remote"])
            if pids:
                self.edge_target = self.rng.choice(pids)

    def edge_back(self, killed: int, seconds: float = 30.0) -> float:
        """Wait until the server replaced the killed edge (every edge serves again)."""
        count = len(self.edges())
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            found = self.edges()
            pids = {e["pid"] for e in found}
            if killed not in pids and len(found) >= count and len(found) > 1:
                return time.monotonic() - started
            time.sleep(0.1)
        raise RuntimeError(f"edge {killed} was not replaced within {seconds:.0f} s")

    def workload_then_kill(self) -> str:
        """Random operations, then the kill; returns how the kill was placed."""
        rng, driver = self.rng, self.driver
        for _ in range(rng.randint(0, self.max_ops)):
            driver.op()
        mode = rng.choices(("after ack", "after delay", "in flight"), (3, 4, 3))[0]
        if mode == "after ack":
            last = driver.op(rng.choices(("create_job", "identity", "read_job"), (5, 2, 3))[0])
            self.kill_now()
            how = f"right after {last}"
        elif mode == "after delay":
            last = driver.op()
            delay = rng.uniform(0, self.max_delay)
            time.sleep(delay)
            self.kill_now()
            how = f"{delay:.2f} s after {last}"
        else:
            delay = rng.uniform(0, 0.4)
            timer = threading.Timer(delay, self.kill_now)
            timer.start()
            done = 0
            try:
                while done < 200:  # bounded: the timer fires within 0.4 s
                    done += 1
                    driver.op()
                    if self.edge_target is None and self.server.proc.poll() is not None:
                        break
            except Killed:
                pass
            timer.join()
            how = f"in flight, {delay:.2f} s into {done} ops"
        if self.edge_target is not None:
            return f"edge {self.edge_target} {how}"
        self.server.proc.wait(10)
        return how

    def restart(self) -> float:
        ports = {k: self.server.ports[k] for k in PORT_KEYS}
        self.server.settings.update(ports)
        started = time.monotonic()
        self.server.start()
        if {k: self.server.ports[k] for k in PORT_KEYS} != ports:
            raise RuntimeError(f"restarted on other ports: {self.server.ports}")
        return time.monotonic() - started

    def new_log(self) -> str:
        with open(self.server.log_path, "rb") as f:
            f.seek(self.log_offset)
            data = f.read()
        self.log_offset += len(data)
        return data.decode(errors="replace")

    def check(self, where: str) -> list[str]:
        api = self.api()
        self.driver.api = api
        violations, counts = check_told(api, self.told, where)
        s = self.summary
        s.jobs_checked += counts.jobs
        s.outputs_checked += counts.outputs
        s.identity_checked += counts.identity
        s.events_checked += counts.events
        text = self.new_log()
        s.torn_tails += text.count("torn tail")
        s.snapshots += text.count("snapshot at seq")
        violations += check_log_text(text, where)
        assert self.fleet is not None
        for name, client in self.fleet.clients.items():
            if client.proc is not None and client.proc.poll() is not None:
                violations.append(f"{where}: client {name} exited ({client.proc.returncode})")
        return violations

    def record(self, violations: list[str]) -> None:
        violations = violations + self.driver.violations
        self.driver.violations = []
        for v in violations:
            self.progress(f"VIOLATION {v}")
        self.summary.violations += violations

    # the end ----------------------------------------------------------------------------------
    def drain(self, seconds: float) -> list[str]:
        """Every job (told or not) finishes; then the fleet runs a job on every node."""
        api = self.api()
        deadline = time.monotonic() + seconds
        live: list[dict] = []
        while time.monotonic() < deadline:
            r = api.get(jobs_path(ORG))
            live = [j for j in r.json() if j["status"] in ("new", "voting", "running")]
            if not live:
                break
            time.sleep(0.2)
        out = [f"drain: job {j['id']} still {j['status']} after {seconds:.0f} s" for j in live]
        assert self.fleet is not None
        try:
            self.fleet.wait_available(*self.node_names, seconds=60)
        except AssertionError as exc:
            return [*out, f"drain: the fleet did not come back: {exc}"]
        r = api.post(
            jobs_path(ORG), {"command": "hello", "nodes": self.node_names, "capture_output": True}
        )
        if r.status_code != 201:
            return [*out, f"drain: final job answered {r.status_code}"]
        job_id = r.json()["id"]
        final = self.fleet.wait_job(job_id, 60)
        if final["nodes"] != {"succeeded": sorted(self.node_names)}:
            out.append(f"drain: the final job ended {final['status']} {final['nodes']}")
        return out

    def run(self) -> Summary:
        started = time.monotonic()
        s = self.summary
        self.progress(f"kill campaign: seed {s.seed}, {self.kills} kills, workdir {self.workdir}")
        try:
            self.setup()
            self.record(self.check("setup"))
            for k in range(1, self.kills + 1):
                if time.monotonic() > self.deadline:
                    self.record([f"stopped after {k - 1} kills: the time bound ran out"])
                    break
                self.aim()
                try:
                    how = self.workload_then_kill()
                except Killed as exc:  # the server died on its own
                    self.record([f"kill {k}: the server went away before the kill: {exc}"])
                    self.kill_now()
                    self.server.proc.wait(10)
                    how = "server already gone"
                live = sum(1 for j in self.told.jobs.values() if job_rank(j.status) < 3)
                s.kills_with_live_jobs += live > 0
                try:
                    if self.edge_target is not None:
                        took = self.edge_back(self.edge_target)
                        s.edge_kills += 1
                    else:
                        took = self.restart()
                except RuntimeError as exc:
                    self.record([f"kill {k}: the server did not start again: {exc}"])
                    break
                s.kills = k
                before = len(s.violations)
                self.record(self.check(f"kill {k}"))
                self.progress(
                    f"kill {k}/{self.kills} {how}; restart {took:.2f} s; jobs "
                    f"{self.driver.jobs_created} ({live} seen live at the kill), outputs "
                    f"{sum(len(j.outputs) for j in self.told.jobs.values())}, identity "
                    f"{self.told.identity_changes}; violations +{len(s.violations) - before}"
                )
            if self.server.proc is not None and self.server.proc.poll() is None:
                self.record(self.drain(30 + 20 + 5))
                self.record(self.check("final"))
        finally:
            s.jobs_created = self.driver.jobs_created
            s.aborts = self.driver.aborts
            s.reads = self.driver.reads
            s.identity_changes = self.told.identity_changes
            s.outputs_seen = sum(len(j.outputs) for j in self.told.jobs.values())
            s.seconds = time.monotonic() - started
            if self.fleet is not None:
                self.fleet.close()
            self.server.kill()
        self.progress(s.line())
        return s


def run_campaign(
    *,
    kills: int,
    seed: int,
    nodes: int = 4,
    workdir: Path | None = None,
    keep: bool = False,
    **options: Any,
) -> Summary:
    """Run the campaign; the work directory is removed afterwards unless ``keep`` or a
    violation (so the state dir and logs of a failure stay for a look)."""
    own = workdir is None
    directory = Path(tempfile.mkdtemp(prefix="kill-campaign-")) if own else workdir
    summary = Campaign(kills=kills, seed=seed, nodes=nodes, workdir=directory, **options).run()
    if own and not keep and not summary.violations:
        shutil.rmtree(directory, ignore_errors=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.campaigns.kill", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--kills", type=int, default=200, help="server kills (default 200)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--nodes", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--max-ops", type=int, default=8, help="operations between kills")
    parser.add_argument("--max-delay", type=float, default=0.6, help="longest kill delay (s)")
    parser.add_argument("--heartbeat-interval", type=int, default=300, help="ms (default 300)")
    parser.add_argument("--max-seconds", type=float, default=3600, help="time bound")
    parser.add_argument(
        "--segment-max-bytes", type=int, default=256 * 1024, help="log segment size (snapshots)"
    )
    parser.add_argument(
        "--edge-share",
        type=float,
        default=0.0,
        help="share of the kills aimed at an edge process instead of the server (default 0)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    summary = run_campaign(
        kills=args.kills,
        seed=seed,
        nodes=args.nodes,
        workdir=args.workdir,
        keep=args.keep,
        max_ops=args.max_ops,
        max_delay=args.max_delay,
        heartbeat_interval=args.heartbeat_interval,
        max_seconds=args.max_seconds,
        segment_max_bytes=args.segment_max_bytes,
        edge_share=args.edge_share,
    )
    if args.json:
        print(json.dumps(summary.__dict__, indent=2))
    else:
        print(summary.line())
        for v in summary.violations:
            print(f"  {v}")
    return 0 if not summary.violations else 1


if __name__ == "__main__":
    sys.exit(main())
