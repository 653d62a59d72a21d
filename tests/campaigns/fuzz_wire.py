"""Wire fuzzing: the frame and message parsers, the server's node pipeline, and the live ports.

Three kinds of fuzz share one message maker (``MessageMaker``: random frame counts and sizes,
headers, signatures, JSON shapes with unicode, surrogates, huge numbers, NaN, deep nesting,
and validly HMAC-signed garbage made with real session keys, so the deeper code is reached):

* pure, in process: ``ServerPipeline`` is the real ``Reactor.handle_frames`` over a real node
  table, job manager, job FSM and state (only the sockets and the log file are fakes); every
  reply it sends must pass the client's checks, every log record it writes must encode and
  replay, and a "victim" node whose key the fuzzer does not know must stay available.
  ``ClientPipeline`` is the node's acceptance check plus its job state machine. The property:
  a value or ``wire.MessageError``, nothing else, and no input takes long;
* coverage-guided: ``atheris`` runs ``atheris_one_input`` in a subprocess (``-runs=N``);
* live: a real server process with a real ``pushy client`` node running jobs, fuzzed from
  CURVE-authenticated DEALERs (keys from a real config fetch), a DEALER without CURVE, raw TCP
  on both ports (ZMTP greetings and garbage), and SUB/XSUB peers sending random subscriptions.

Run ``python -m tests.campaigns.fuzz_wire --inputs 1000000``; tests/unit/test_wire_fuzz.py and
tests/e2e/test_live_fuzz.py are the CI slices.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import dataclasses
import faulthandler
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from appliance.client import jobstate
from appliance.client.whitelist import resolve
from appliance.core import jobfsm, wire
from appliance.core import nodes as corenodes
from appliance.core.output import chunk_fields
from appliance.core.settings import Settings
from appliance.core.state import NodeKeys, State, apply
from appliance.server.advertise import Advertiser
from appliance.server.clock import Clock
from appliance.server.dispatcher import Dispatcher
from appliance.server.feeds import Hub
from appliance.server.livejobs import LiveJobs
from appliance.server.outbound import NodeSigner
from appliance.server.outputs import Outputs
from appliance.server.reactor import Reactor
from tests.inproc import FakeRouter

REPO = Path(__file__).resolve().parents[2]
EPOCH = 1_700_000_000.0
ORG = "fuzzorg"
FUZZ_NODES = ("fuzz1", "fuzz2", "fuzz3")
VICTIM = "victim"
SLOW_INPUT_SECONDS = 2.0  # a pure input taking longer than this counts as a hang
MAX_BODY = 65536


# ---------------------------------------------------------------------------------------------
# The message maker


def _unicode_char(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.5:
        return chr(rng.randrange(0x20, 0x7F))
    if r < 0.6:
        return chr(rng.randrange(0, 0x20))
    if r < 0.75:
        return chr(rng.randrange(0x80, 0x800))
    if r < 0.85:
        return chr(rng.choice((0xFFFF, 0xFFFE, 0xFEFF, 0x202E, 0x200B, 0x10FFFF, 0x1F600)))
    if r < 0.93:
        return chr(rng.randrange(0xD800, 0xE000))  # a lone surrogate
    return chr(rng.randrange(0x800, 0x110000))


def random_text(rng: random.Random, max_len: int = 40) -> str:
    n = rng.choice((0, 1, 2, rng.randrange(0, max_len + 1)))
    return "".join(_unicode_char(rng) for _ in range(n))


HUGE_NUMBERS: tuple[Any, ...] = (
    0,
    -1,
    2**31,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**40,
    -(10**400),
    1e308,
    -1e-320,
    0.1,
    float("nan"),
    float("inf"),
    float("-inf"),
)


def random_json(rng: random.Random, depth: int = 0, max_depth: int = 4) -> Any:
    """A JSON-ish value: nested containers, unicode (with surrogates), huge numbers, NaN."""
    r = rng.random()
    if depth < max_depth and r < 0.15:
        return [random_json(rng, depth + 1, max_depth) for _ in range(rng.randrange(0, 5))]
    if depth < max_depth and r < 0.3:
        return {
            random_text(rng, 8): random_json(rng, depth + 1, max_depth)
            for _ in range(rng.randrange(0, 5))
        }
    if r < 0.55:
        return random_text(rng)
    if r < 0.75:
        return rng.choice(HUGE_NUMBERS) if rng.random() < 0.5 else rng.randrange(-1000, 1000)
    return rng.choice((None, True, False, "", "null", {}, []))


def encode_json(rng: random.Random, value: Any) -> bytes:
    """JSON text as many encoders might write it: NaN/Infinity tokens, big integers, escaped or
    raw (possibly invalid UTF-8 from lone surrogates) non-ASCII text."""
    text = json.dumps(value, ensure_ascii=rng.random() < 0.5, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


def deep_json(rng: random.Random) -> bytes:
    n = rng.choice((10, 500, 1023, 1024, 1025, 5000, 20000))
    opener, closer = rng.choice(((b"[", b"]"), (b'{"a":', b"}")))
    return opener * n + b"1" + closer * n


@dataclasses.dataclass
class Identity:
    """A node the fuzzer can sign for (its session key), or pretend to be (key None)."""

    org: str
    node: str
    key: bytes | None
    incarnation: str


class MessageMaker:
    """Random ``[header, body, ...]`` frame lists; ``job_ids()`` names jobs worth aiming at."""

    def __init__(
        self,
        rng: random.Random,
        identities: list[Identity],
        *,
        job_ids: Callable[[], list[str]] = list,
        max_body: int = MAX_BODY,
        big_share: float = 0.01,
    ) -> None:
        self.rng = rng
        self.identities = identities
        self.signers = [i for i in identities if i.key is not None]
        self.job_ids = job_ids
        self.max_body = max_body
        self.big_share = big_share
        self.counts: Counter[str] = Counter()

    # Fields ----------------------------------------------------------------------------------
    def timestamp(self, now: float) -> Any:
        rng = self.rng
        r = rng.random()
        if r < 0.75:
            return wire.http_date(now + rng.choice((0, 0, 0, -1, 5, -299, 299, -301, 301, -1e6)))
        if r < 0.85:
            return rng.choice(
                (
                    "Sunday, 06-Nov-94 08:49:37 GMT",
                    "Sun Nov  6 08:49:37 1994",
                    "Fri, 31 Dec 9999 23:59:59 GMT",
                    "Mon, 01 Jan 0001 00:00:00 GMT",
                    "Mon, 01 Jan 1970 00:00:00 +9999",
                    "Thu, 32 Feb 2024 25:61:61 GMT",
                    "Mon, 01 Jan 99999999999 00:00:00 GMT",
                    "1, 1 1 1 1:1:1",
                    "",
                    " ",
                    "GMT",
                )
            )
        if r < 0.95:
            stamp = wire.http_date(now)
            i = rng.randrange(len(stamp))
            return stamp[:i] + random_text(rng, 3) + stamp[i + rng.randrange(0, 3) :]
        return random_json(rng, 2)

    def body(self, ident: Identity, now: float) -> dict[str, Any]:
        rng = self.rng
        kinds = sorted(corenodes.MESSAGE_TYPES)
        kind: Any = rng.choice(kinds)
        if rng.random() < 0.08:
            kind = rng.choice(("commit", "run", "abort", "ack", "", "HEARTBEAT", None, 1, [], {}))
        jobs = self.job_ids()
        job_id: Any = None
        r = rng.random()
        if jobs and r < 0.6:
            job_id = rng.choice(jobs)
        elif r < 0.8:
            job_id = rng.choice((None, "null", "", "x" * 65, "\x00invalid"))
        elif r < 0.95:
            job_id = random_text(rng)
        else:
            job_id = random_json(rng, 2)
        body = wire.node_message(
            node=ident.node,
            client=rng.choice(("host", None, random_text(rng, 10))),
            org=ident.org,
            type="x",
            sequence=rng.randrange(1, 1000),
            t=now,
            incarnation=ident.incarnation,
            job_id=None,
            job_state=None,
        )
        body["type"] = kind
        body["job_id"] = job_id
        body["timestamp"] = self.timestamp(now)
        if kind == "heartbeat" or rng.random() < 0.1:
            body["job_state"] = rng.choice(
                ("idle", "committed", "running", "ready", None, [], random_text(rng, 5))
            )
        if kind in ("succeeded", "failed") or rng.random() < 0.05:
            if rng.random() < 0.8:
                body["stdout"] = random_text(rng, 200)
                body["stderr"] = random_text(rng, 50)
            else:
                body["stdout"] = random_json(rng, 2)
        if kind == "output" or rng.random() < 0.02:  # live output: good and bad chunks
            good = chunk_fields(
                rng.choice(("stdout", "stderr")),
                rng.randrange(0, 6000),
                rng.randbytes(rng.randrange(0, 3000)),
            )
            body.update(good)
            if rng.random() < 0.3:
                body[rng.choice(list(good))] = random_json(rng, 2)
        if rng.random() < 0.2:  # mutate any field, add odd ones
            for _ in range(rng.randrange(1, 4)):
                name = rng.choice((*body.keys(), random_text(rng, 10)))
                body[name] = random_json(rng)
        if rng.random() < 0.03:
            body["incarnation_id"] = random_json(rng, 2)
        if rng.random() < 0.02:
            body.pop(rng.choice(list(body)), None)
        return body

    def header(self, method: str, signature: str) -> bytes:
        rng = self.rng
        r = rng.random()
        if r < 0.85:
            return wire.format_header(method, signature)
        if r < 0.9:
            return f"SignedChecksum:{signature};SigningMethod:{method};Version:2.0".encode()
        if r < 0.95:
            version = rng.choice(("1.0", "2.0.0", "", "2", " 2.0", random_text(rng, 4)))
            return f"Version:{version};SigningMethod:{method};Signature:{signature}".encode(
                "utf-8", "surrogatepass"
            )
        parts = [f"Version:2.0;SigningMethod:{method};Signature:{signature}"]
        parts += [random_text(rng, 20) for _ in range(rng.randrange(1, 6))]
        rng.shuffle(parts)
        return ";".join(parts).encode("utf-8", "surrogatepass")

    # Messages --------------------------------------------------------------------------------
    def frames(self, now: float) -> list[bytes]:
        rng = self.rng
        r = rng.random()
        if r < 0.45:
            self.counts["signed"] += 1
            return self.signed(now)
        if r < 0.6:
            self.counts["signed_raw"] += 1
            return self.signed_raw(now)
        if r < 0.75:
            self.counts["mutated"] += 1
            return self.mutate(self.signed(now))
        if r < 0.85:
            self.counts["frames"] += 1
            return [
                rng.randbytes(rng.choice((0, 1, 10, rng.randrange(0, 3000))))
                for _ in range(rng.choice((0, 1, 1, 2, 3, 4, rng.randrange(0, 40))))
            ]
        if r < 0.95:
            self.counts["header"] += 1
            return [self.random_header(), self.signed(now)[1]]
        self.counts["sizes"] += 1
        return self.sized(now)

    def signed(self, now: float, ident: Identity | None = None) -> list[bytes]:
        rng = self.rng
        if ident is None:
            pool = self.signers if self.signers and rng.random() < 0.8 else self.identities
            ident = rng.choice(pool)
        body = self.body(ident, now)
        raw = encode_json(rng, body) if rng.random() < 0.3 else self._orjson(body)
        key = self._key(ident)
        method = wire.HMAC if rng.random() < 0.97 else rng.choice((wire.RSA, "hmac_sha1", ""))
        frames = [self.header(method, wire.hmac_signature(key, raw)), raw]
        if rng.random() < 0.02:
            frames.append(rng.randbytes(rng.randrange(0, 50)))
        return frames

    def signed_raw(self, now: float) -> list[bytes]:
        """A valid HMAC over a body that is not a sound message: the JSON and date parsers."""
        rng = self.rng
        ident = rng.choice(self.signers) if self.signers else rng.choice(self.identities)
        prefix = f'{{"org":{json.dumps(ident.org)},"node":{json.dumps(ident.node)},'
        r = rng.random()
        if r < 0.3:
            raw = prefix.encode() + rng.randbytes(rng.randrange(0, 200))
        elif r < 0.5:
            body = self.body(ident, now)
            raw = bytearray(self._orjson(body))
            for _ in range(rng.randrange(1, 4)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            raw = bytes(raw)
        elif r < 0.6:
            raw = deep_json(rng)
        elif r < 0.8:
            stamp = self.timestamp(now)
            value = rng.choice(
                (
                    "NaN",
                    "Infinity",
                    "-Infinity",
                    "1e999",
                    "123456789012345678901234567890",
                    "-0",
                    "0.0000000000000000000001",
                    '"\\ud800"',
                    '"\\udc00\\ud800"',
                    '"\\u0000"',
                    "[" * 100 + "]" * 100,
                    "tru",
                    '"' + "\\\\" * 50 + '"',
                )
            )
            field = rng.choice(("sequence", "type", "job_id", "timestamp", "x", "stdout"))
            raw = (
                prefix + f'"type":"heartbeat","timestamp":{json.dumps(stamp)},"{field}":{value}}}'
            ).encode()
        else:
            raw = encode_json(rng, random_json(rng, 0, 6))
        key = self._key(ident)
        return [wire.format_header(wire.HMAC, wire.hmac_signature(key, raw)), raw]

    def sized(self, now: float) -> list[bytes]:
        """Bodies and headers at and around the limits (and, rarely, far beyond them)."""
        rng = self.rng
        ident = rng.choice(self.signers) if self.signers else rng.choice(self.identities)
        body = self.body(ident, now)
        body["stdout"] = ""
        base = len(self._orjson(body))
        big = rng.random() < self.big_share
        target = (
            rng.choice((self.max_body + 1, self.max_body + 5000, 3 * self.max_body))
            if big
            else rng.choice((self.max_body - 1, self.max_body, self.max_body - base, 2048))
        )
        body["stdout"] = "a" * max(0, target - base)
        raw = self._orjson(body)
        key = self._key(ident)
        header = wire.format_header(wire.HMAC, wire.hmac_signature(key, raw))
        if rng.random() < 0.3:
            header += b";" + b"x" * rng.choice((2048 - len(header) - 1, 2048 - len(header), 4000))
        return [header, raw]

    def random_header(self) -> bytes:
        rng = self.rng
        r = rng.random()
        if r < 0.3:
            return rng.randbytes(rng.randrange(0, 100))
        if r < 0.5:
            return random_text(rng, 100).encode("utf-8", "surrogatepass")
        if r < 0.7:
            return b";" * rng.randrange(0, 3000)
        sig = base64.b64encode(rng.randbytes(rng.choice((0, 1, 31, 32, 33)))).decode()
        return wire.format_header(rng.choice((wire.HMAC, wire.RSA, "x")), sig)

    def mutate(self, frames: list[bytes]) -> list[bytes]:
        rng = self.rng
        frames = list(frames)
        i = rng.randrange(len(frames))
        data = bytearray(frames[i])
        op = rng.randrange(5)
        if op == 0 and data:
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif op == 1 and data:
            del data[rng.randrange(len(data)) :]
        elif op == 2:
            pos = rng.randrange(len(data) + 1)
            data[pos:pos] = rng.randbytes(rng.randrange(1, 20))
        elif op == 3:
            frames.insert(rng.randrange(len(frames) + 1), rng.randbytes(rng.randrange(0, 30)))
        else:
            frames = frames[::-1]
        if op != 3 and op != 4:
            frames[i] = bytes(data)
        return frames

    def _key(self, ident: Identity) -> bytes:
        rng = self.rng
        if ident.key is not None and rng.random() < 0.93:
            return ident.key
        if self.signers and rng.random() < 0.5:
            return rng.choice(self.signers).key or b""
        return rng.randbytes(rng.choice((0, 16, 32)))

    def _orjson(self, body: dict[str, Any]) -> bytes:
        try:
            return orjson.dumps(body)
        except (TypeError, orjson.JSONEncodeError):
            return encode_json(self.rng, body)


# ---------------------------------------------------------------------------------------------
# The server's node pipeline, in process


class _FakeStore:
    """Stands in for the event log: ``record`` applies at once, every record is encoded as the
    log would and replayed into a shadow state (a fuzzed message must never make an
    unencodable or unreplayable record)."""

    def __init__(self, state: State, shadow: State) -> None:
        self.state = state
        self.shadow = shadow
        self.seq = 0

    def append(self, record: dict[str, Any]) -> int:
        self.seq += 1
        line = orjson.dumps(record)
        replayed = orjson.loads(line)
        replayed["seq"] = self.seq
        apply(self.shadow, replayed)
        return self.seq

    def record(self, record: dict[str, Any]) -> int:
        apply(self.state, record)
        return self.append(record)


@dataclasses.dataclass(frozen=True)
class _Entry:
    key: Any
    command_line: str
    lock: bool | str | None = None


def _scratch_dir(prefix: str) -> str:
    """A temp dir removed when the process exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path


class InvariantError(AssertionError):
    """A fuzzed input broke a property that holds whatever the input (not a parse error)."""


class ServerPipeline:
    """The real ``Reactor.handle_frames`` with the real node table, job manager, job FSM and
    state; the ROUTER and the log are fakes. Jobs are created, time out and finish as the
    server's supervisors would have them; a victim node heartbeats on time and must stay
    available whatever the fuzz does (its key is never given to the fuzzer)."""

    def __init__(self, seed: int = 0) -> None:
        rng = random.Random(seed)
        self.rng = rng
        self.settings = Settings(heartbeat_interval=200.0, voting_timeout=2.0, rehab_timer=500.0)
        s = self.settings
        self.state = State()
        self.shadow = State()
        self.store = _FakeStore(self.state, self.shadow)
        self.table = corenodes.NodeTable(
            corenodes.Liveness(
                interval=s.heartbeat_seconds,
                decay_window=s.decay_window,
                threshold=s.down_threshold,
                rehab_interval=s.rehab_seconds,
            )
        )
        clock = Clock(start=EPOCH, follow_system=False)  # unused: every input carries its time
        self.reactor = Reactor(
            s, self.state, clock, curve_secret=None, signer=NodeSigner(self.state, self.table)
        )
        self.reactor.ctx.term()  # no sockets here; the context is not needed
        self.router = FakeRouter()
        self.reactor.router = self.router  # type: ignore[assignment]
        self.live = LiveJobs(self.state)
        self.dispatcher = Dispatcher(
            s,
            self.state,
            self.store,  # type: ignore[arg-type]
            self.table,
            self.reactor,
            hub=Hub(),
            clock=clock,
            live=self.live,
            advertiser=Advertiser("fuzzhost"),
            # live output lands in a temp dir, kept small so the limit and marker are hit
            outputs=Outputs(_scratch_dir("fuzz-output-"), 4096),
        )
        self.now = EPOCH
        self.identities: list[Identity] = []
        for name in FUZZ_NODES:
            ident = Identity(ORG, name, rng.randbytes(32), f"inc-{name}")
            self.identities.append(ident)
            self.state.node_keys[(ORG, name)] = NodeKeys(session_key=ident.key)
        # a rotation in its grace period: two keys accepted for fuzz3
        self.state.node_keys[(ORG, "fuzz3")].previous_key = rng.randbytes(32)
        self.state.node_keys[(ORG, "fuzz3")].previous_until = EPOCH + 1e9
        self.victim_key = rng.randbytes(32)
        self.state.node_keys[(ORG, VICTIM)] = NodeKeys(session_key=self.victim_key)
        self.identities += [
            Identity(ORG, VICTIM, None, "inc-victim"),  # claimed, never signable
            Identity(ORG, "unknown", None, "inc-unknown"),
            Identity("otherorg", "fuzz1", None, "inc-x"),
        ]
        self.victim_address = b"\x00victim"
        self.addresses = [b"\x00a1", b"\x00a2", b"\x00a3", b"", b"\x00" * 255]
        self.victim_sequence = 0
        self.last_victim_beat = 0.0
        self.inputs = 0
        self.replies = 0
        self.jobs_created = 0
        self.jobs_finished: Counter[str] = Counter()
        self._join_victim()

    # The victim ------------------------------------------------------------------------------
    def _victim_send(self, kind: str) -> None:
        self.victim_sequence += 1
        body = wire.node_message(
            node=VICTIM,
            client="victimhost",
            org=ORG,
            type=kind,
            sequence=self.victim_sequence,
            t=self.now,
            incarnation="inc-victim",
            job_id=None,
            job_state="idle" if kind == "heartbeat" else None,
        )
        frames = wire.hmac_frames(self.victim_key, body)
        self.reactor.handle_frames(
            [self.victim_address, *frames], self.now, self.dispatcher.node_message
        )
        self.last_victim_beat = self.now

    def _join_victim(self) -> None:
        self._victim_send("heartbeat")
        self._victim_send("aborted")
        self.check_victim()

    def check_victim(self) -> None:
        node = self.table.online((ORG, VICTIM))
        if node is None or not node.available or node.address != self.victim_address:
            raise InvariantError(f"the victim node changed: {node!r}")

    # Jobs, timers ----------------------------------------------------------------------------
    def live_job_ids(self) -> list[str]:
        return list(self.live)

    def _create_job(self) -> None:
        rng = self.rng
        self.jobs_created += 1
        job_id = f"{self.jobs_created:032x}"
        nodes = rng.sample(FUZZ_NODES, rng.randrange(1, len(FUZZ_NODES) + 1))
        if rng.random() < 0.2:
            nodes.append("unknown")
        created = {
            "type": "job_created",
            "t": self.now,
            "job": {
                "id": job_id,
                "org": ORG,
                "command": "chef-client",
                "nodes": nodes,
                "quorum": rng.randrange(0, len(nodes) + 1),
                "run_timeout": rng.choice((1, 2, 5)),
                "user": None,
                "dir": None,
                "env": None,
                "file": None,
                "capture": rng.random() < 0.5,
                "requestor": "pivotal",
            },
        }
        apply(self.state, created)
        apply(self.shadow, orjson.loads(orjson.dumps(created)))
        job = self.state.jobs[job_id]
        unavailable = {n for n in nodes if not self.dispatcher._available((ORG, n))}
        step = jobfsm.start(job, unavailable, self.now, server_name="fuzzhost", voting_timeout=2.0)
        self.live.add(job)
        self.live.spawned.receive_nowait()  # no supervisor here: ``_supervise`` plays it
        self.dispatcher.step(job, step, self.now)

    def _supervise(self) -> None:
        """What the job supervisors do: time out, then forget a finished job (bounded state)."""
        for job_id in list(self.live):
            job = self.state.jobs[job_id]
            now = self.now
            if job.status == "voting":
                deadline = jobfsm.voting_deadline(job, self.settings.voting_timeout)
                if deadline is not None and now >= deadline:
                    self.dispatcher.step(job, jobfsm.on_voting_timeout(job, now), now)
            elif job.status == "running":
                deadline = jobfsm.running_deadline(job)
                if deadline is not None and now >= deadline:
                    self.dispatcher.step(job, jobfsm.on_run_timeout(job, now), now)
            if jobfsm.job_finished(job):
                self._check_shadow(job)
                self.jobs_finished[job.status] += 1
                self.live.retire(job)
                del self.state.jobs[job_id]
                self.shadow.jobs.pop(job_id, None)
        if not self.live.changed:
            self._create_job()

    def _check_shadow(self, job: jobfsm.Job) -> None:
        replayed = self.shadow.jobs.get(job.id)
        if replayed is None or (replayed.status, replayed.nodes, replayed.outputs) != (
            job.status,
            job.nodes,
            job.outputs,
        ):
            raise InvariantError(f"job {job.id} does not replay from its log records")

    def tick(self, dt: float) -> None:
        """Advance the simulated clock; the victim beats, timers and the scanner run."""
        self.now += dt
        interval = self.settings.heartbeat_seconds
        if self.now - self.last_victim_beat >= interval:
            self._victim_send("heartbeat")
        self.dispatcher.rehab_timer(self.now)
        if self.inputs % 50 == 0:
            self.dispatcher.liveness_scan(self.now)
            self._supervise()
        if self.inputs % 5000 == 0 and self.rng.random() < 0.5:
            # as after a server restart: a fuzz node is a ghost until it speaks again
            name = self.rng.choice(FUZZ_NODES)
            self.table.restore((ORG, name), f"inc-{name}", self.now)

    # Input -----------------------------------------------------------------------------------
    def feed(self, frames: list[bytes], address: bytes | None = None) -> None:
        """One message as the ROUTER delivers it; raises only when a property is broken."""
        self.inputs += 1
        if address is None:
            address = self.rng.choice(self.addresses)
        before = len(self.router.sent)
        self.reactor.handle_frames([address, *frames], self.now, self.dispatcher.node_message)
        for reply in self.router.sent[before:]:
            self._check_reply(reply)
        self.replies += len(self.router.sent) - before
        if len(self.router.sent) > 10_000:
            self.router.sent.clear()
        self.check_victim()

    def _check_reply(self, reply: list[bytes]) -> None:
        """A reply goes to the address a node last spoke from, signed with that node's key (the
        fuzzer may speak for several nodes from one address: any of them will do)."""
        if len(reply) != 3:
            raise InvariantError(f"a reply of {len(reply)} frames")
        address, header, body = reply
        keys = [
            self.state.node_keys[node.key].session_key
            for node in self.table.nodes.values()
            if node.address == address and node.key in self.state.node_keys
        ]
        if not keys:
            raise InvariantError(f"a reply to an address of no node: {address!r}")
        problem: Exception | None = None
        for key in keys:
            try:
                wire.check_client_inbound(
                    header,
                    body,
                    session_key=key,
                    server_public_key=None,
                    now=self.now,
                    max_skew=300,
                )
                return
            except wire.MessageError as exc:
                problem = exc
        raise InvariantError(f"the server sent a message its node refuses: {problem}")


# ---------------------------------------------------------------------------------------------
# The node's acceptance, in process


class ClientPipeline:
    """``wire.check_client_inbound`` and the job state machine, dispatched as the agent does."""

    def __init__(self, seed: int = 0) -> None:
        rng = random.Random(seed)
        self.key = rng.randbytes(32)
        self.now = EPOCH
        self.jobs = jobstate.JobState()
        self.entries = [
            _Entry("chef-client", "chef-client"),
            _Entry(re.compile(r"echo (\w+)"), "echo \\1"),
            _Entry("locked", "true", "/tmp/lockname"),
        ]
        self.accepted = 0
        self.running: str | None = None

    def feed(self, frames: list[bytes]) -> dict[str, Any] | None:
        if len(frames) != 2:
            return None
        try:
            body = wire.check_client_inbound(
                frames[0],
                frames[1],
                session_key=self.key,
                server_public_key=None,
                now=self.now,
                max_skew=300,
            )
        except wire.MessageError:
            return None
        self.accepted += 1
        kind = body.get("type")
        if kind == "commit":
            actions = self.jobs.on_commit(
                body,
                resolve=lambda command: resolve(self.entries, command),
                user_exists=lambda user: user == "root",
                dir_exists=lambda d: d == "/tmp",
                lock_free=lambda lock: True,
            )
        elif kind == "run":
            actions = self.jobs.on_run(body)
        elif kind == "abort":
            actions = self.jobs.on_abort(body)
        else:
            actions = []
        for action in actions:
            if isinstance(action, jobstate.StartProcess):
                self.running = action.job.id
                actions += self.jobs.on_started(action.job.id)
            elif isinstance(action, jobstate.KillProcess):
                actions += self.jobs.on_finished(action.job_id, None, b"", b"")
        if self.running is not None and self.jobs.state == "running":
            self.jobs.on_finished(self.running, 0, b"out\xff", "é".encode())
            self.running = None
        for action in actions:
            if isinstance(action, jobstate.Reply):
                # what the agent would send must encode as a node message
                wire.hmac_frames(
                    self.key,
                    wire.node_message(
                        node="n",
                        client="h",
                        org=ORG,
                        type=action.type,
                        sequence=1,
                        t=self.now,
                        incarnation="i",
                        job_id=action.job_id,
                        **action.extra,
                    ),
                )
        return body


class ClientMessageMaker:
    """Server → node messages: commits, runs, aborts with random options, signed or not."""

    def __init__(self, rng: random.Random, key: bytes) -> None:
        self.rng = rng
        self.key = key

    def frames(self, now: float) -> list[bytes]:
        rng = self.rng
        kind = rng.choice(("commit", "commit", "run", "abort", "ack", "heartbeat", "x", None, 1))
        body: dict[str, Any] = {
            "sequence": rng.randrange(0, 100),
            "timestamp": wire.http_date(now + rng.choice((0, -1000, 299, 301, 1e6))),
            "type": kind,
            "job_id": rng.choice(("j1", "j2", None, "", random_text(rng, 10), 5)),
        }
        if kind == "commit":
            body["command"] = rng.choice(
                ("chef-client", "echo hi", "echo hi\nrm", "locked", "", None, random_text(rng))
            )
            for name in ("user", "dir", "env", "file", "capture"):
                if rng.random() < 0.3:
                    body[name] = rng.choice(
                        (
                            "root",
                            "/tmp",
                            "raw:abc",
                            "base64:QUJD",
                            "base64:@@",
                            {"A": "b"},
                            {"A": 1},
                            random_json(rng, 2),
                        )
                    )
        raw = encode_json(rng, body) if rng.random() < 0.3 else _dumps_or_json(rng, body)
        r = rng.random()
        if r < 0.7:
            sig = wire.hmac_signature(self.key, raw)
        elif r < 0.85:
            sig = wire.hmac_signature(rng.randbytes(32), raw)
        else:
            sig = random_text(rng, 60)
        header = wire.format_header(wire.HMAC, "x").replace(b"Signature:x", b"")
        header += f"Signature:{sig}".encode("utf-8", "surrogatepass")
        if rng.random() < 0.1:
            header = rng.choice((b"", rng.randbytes(40), header.replace(b"hmac", b"rsa2048")))
        frames = [header, raw]
        if rng.random() < 0.1:
            frames = MessageMaker(rng, []).mutate(frames)
        return frames


def _dumps_or_json(rng: random.Random, body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except (TypeError, orjson.JSONEncodeError):
        return encode_json(rng, body)


# ---------------------------------------------------------------------------------------------
# Pure fuzz loop


def _where(exc: BaseException) -> str:
    """The exception and the line that raised it."""
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{exc!r} at {Path(frame.filename).name}:{frame.lineno} ({frame.line})"


@dataclasses.dataclass
class PureReport:
    server_inputs: int = 0
    client_inputs: int = 0
    accepted: int = 0  # server inputs that passed the wire pipeline
    replies: int = 0
    jobs_created: int = 0
    jobs_finished: dict[str, int] = dataclasses.field(default_factory=dict)
    client_accepted: int = 0
    seconds: float = 0.0
    slowest: float = 0.0
    failures: list[str] = dataclasses.field(default_factory=list)
    kinds: dict[str, int] = dataclasses.field(default_factory=dict)


def run_pure(
    inputs: int,
    seed: int,
    *,
    client_share: float = 0.2,
    max_seconds: float = 3600.0,
    progress: Callable[[str], None] | None = None,
    max_failures: int = 20,
) -> PureReport:
    """Feed ``inputs`` random messages through the server and client pipelines in process."""
    rng = random.Random(seed)
    logging.getLogger("pushy.reactor").setLevel(logging.ERROR)  # not "dropped N more ..."
    server = ServerPipeline(seed)
    client = ClientPipeline(seed)
    maker = MessageMaker(rng, server.identities, job_ids=server.live_job_ids)
    client_maker = ClientMessageMaker(rng, client.key)
    report = PureReport()
    start = time.monotonic()
    faulthandler.dump_traceback_later(60, exit=True)  # a hang kills the run, with its stack
    try:
        for i in range(inputs):
            if time.monotonic() - start > max_seconds or len(report.failures) >= max_failures:
                break
            if i % 1000 == 0:
                faulthandler.dump_traceback_later(60, exit=True)
                if progress and i % 100_000 == 0 and i:
                    progress(f"pure: {i} inputs, {i / (time.monotonic() - start):.0f}/s")
            t0 = time.monotonic()
            if rng.random() < client_share:
                report.client_inputs += 1
                frames = client_maker.frames(client.now)
                try:
                    client.feed(frames)
                except Exception as exc:  # noqa: BLE001 - any other exception is a finding
                    report.failures.append(f"client: {_where(exc)} on {frames!r:.300}")
            else:
                report.server_inputs += 1
                frames = maker.frames(server.now)
                dropped = sum(server.reactor.dropped.values())
                try:
                    server.feed(frames)
                    server.tick(rng.random() * 0.03)
                except Exception as exc:  # noqa: BLE001 - any other exception is a finding
                    report.failures.append(f"server: {_where(exc)} on {frames!r:.300}")
                    server = ServerPipeline(seed + i)  # go on from a sound state
                    maker = MessageMaker(rng, server.identities, job_ids=server.live_job_ids)
                else:
                    if sum(server.reactor.dropped.values()) == dropped:
                        report.accepted += 1
            elapsed = time.monotonic() - t0
            report.slowest = max(report.slowest, elapsed)
            if elapsed > SLOW_INPUT_SECONDS:
                report.failures.append(f"slow input ({elapsed:.1f} s): {frames!r:.300}")
    finally:
        faulthandler.cancel_dump_traceback_later()
    report.seconds = time.monotonic() - start
    report.replies = server.replies
    report.jobs_created = server.jobs_created
    report.jobs_finished = dict(server.jobs_finished)
    report.client_accepted = client.accepted
    report.kinds = dict(maker.counts)
    return report


# ---------------------------------------------------------------------------------------------
# The hypothesis properties of tests/unit/test_wire_fuzz.py, with more examples


@dataclasses.dataclass
class HypothesisReport:
    examples: int = 0
    failing: int = 0
    tests: int = 0
    seconds: float = 0.0
    exit_status: int = 0
    output_tail: str = ""


def run_hypothesis(examples: int, seed: int, *, max_seconds: int = 3600) -> HypothesisReport:
    """Run the property tests (not the slices) with ``examples`` examples each."""
    start = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/unit/test_wire_fuzz.py",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "not slice and not atheris",
            f"--hypothesis-seed={seed}",
            "--hypothesis-show-statistics",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=max_seconds,
        env={**os.environ, "FUZZ_WIRE_EXAMPLES": str(examples)},
    )
    output = proc.stdout + proc.stderr
    counts = re.findall(r"(\d+) passing, (\d+) failing", output)
    return HypothesisReport(
        examples=sum(int(p) + int(f) for p, f in counts),
        failing=sum(int(f) for _, f in counts),
        tests=len(re.findall(r"during generate phase", output)),
        seconds=time.monotonic() - start,
        exit_status=proc.returncode,
        output_tail=output[-4000:],
    )


# ---------------------------------------------------------------------------------------------
# Coverage-guided fuzzing (atheris)

_ATHERIS: dict[str, Any] = {}


def _atheris_targets() -> tuple[ServerPipeline, ClientPipeline]:
    if "server" not in _ATHERIS:
        _ATHERIS["server"] = ServerPipeline(1)
        _ATHERIS["client"] = ClientPipeline(1)
    return _ATHERIS["server"], _ATHERIS["client"]


def _split_frames(data: bytes) -> list[bytes]:
    return data.split(b"\xf0\x9f") if data else []


def atheris_one_input(data: bytes) -> None:
    """One libFuzzer input: byte 0 picks the target, byte 1 the identity, the rest is payload.

    Targets: 0 raw frames to the server; 1 a body signed with a real session key (reaches the
    JSON, timestamp, node and job code); 2 a header + signed body; 3 raw frames to the client;
    4 a body signed with the client's key (reaches the job state machine); 5 header/date
    parsers. Only ``wire.MessageError`` may come out of the parsers; everything else is a bug.
    """
    if len(data) < 2:
        return
    server, client = _atheris_targets()
    mode, who, payload = data[0] % 6, data[1], data[2:]
    ident = server.identities[who % len(server.identities)]
    key = ident.key or server.identities[0].key or b""
    if mode == 0:
        server.feed(_split_frames(payload))
    elif mode == 1:
        if who & 0x80:
            prefix = f'{{"org":"{ident.org}","node":"{ident.node}",'.encode()
            payload = prefix + payload
        server.feed([wire.format_header(wire.HMAC, wire.hmac_signature(key, payload)), payload])
    elif mode == 2:
        header, _, body = payload.partition(b"\xf0\x9f")
        sig = wire.hmac_signature(key, body).encode()
        server.feed([header.replace(b"SIG", sig), body])
    elif mode == 3:
        client.feed(_split_frames(payload))
    elif mode == 4:
        client.feed(
            [wire.format_header(wire.HMAC, wire.hmac_signature(client.key, payload)), payload]
        )
    else:
        if os.environ.get("FUZZ_WIRE_PLANTED_BUG") == "1":
            raise RuntimeError("planted bug: shows that the harness reports a crash")
        try:
            wire.parse_header(payload)
        except wire.MessageError:
            pass
        text = payload.decode("utf-8", "replace")
        wire.parse_http_date(text)
        wire.job_id_of({"job_id": text})
    server.tick(0.01 * (who & 7))
    server.now = server.now if server.now < EPOCH + 1e6 else EPOCH  # stay near the epoch


def atheris_seeds(directory: Path, seed: int, count: int = 64) -> None:
    """A seed corpus of sound and nearly sound messages for each target."""
    directory.mkdir(parents=True, exist_ok=True)
    server = ServerPipeline(1)
    rng = random.Random(seed)
    maker = MessageMaker(rng, server.identities, job_ids=server.live_job_ids)
    cmaker = ClientMessageMaker(rng, ClientPipeline(1).key)
    for i in range(count):
        ident_index = rng.randrange(len(FUZZ_NODES))
        frames = maker.signed(EPOCH, server.identities[ident_index])
        header, body = frames[0], frames[1]
        samples = {
            "s0": bytes([0, ident_index]) + b"\xf0\x9f".join(frames),
            "s1": bytes([1, ident_index]) + body,
            "s2": bytes([2, ident_index])
            + re.sub(rb"Signature:[^;]*", b"Signature:SIG", header)
            + b"\xf0\x9f"
            + body,
            "s3": bytes([3, 0]) + b"\xf0\x9f".join(cmaker.frames(EPOCH)),
            "s4": bytes([4, 0]) + cmaker.frames(EPOCH)[1],
            "s5": bytes([5, 0]) + wire.http_date(EPOCH + i * 86400 * 37).encode(),
        }
        for name, sample in samples.items():
            (directory / f"{name}-{i}").write_bytes(sample)


@dataclasses.dataclass
class AtherisReport:
    runs: int = 0
    seconds: float = 0.0
    coverage: int = 0
    features: int = 0
    exit_status: int = 0
    crashed: bool = False
    output_tail: str = ""


def run_atheris(
    runs: int,
    seed: int,
    workdir: Path,
    *,
    max_seconds: int = 3600,
    max_len: int = 4096,
    env: dict[str, str] | None = None,
) -> AtherisReport:
    """Run the atheris harness in a subprocess for ``runs`` inputs (libFuzzer ``-runs``)."""
    corpus = workdir / "atheris-corpus"
    seeds = workdir / "atheris-seeds"
    atheris_seeds(seeds, seed)
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts = workdir / "atheris-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "tests.campaigns.fuzz_wire",
        "--atheris-child",
        f"-runs={runs}",
        f"-seed={seed % 2**31 or 1}",
        f"-max_len={max_len}",
        "-timeout=10",  # one input running 10 s is a hang
        f"-max_total_time={max_seconds}",
        "-rss_limit_mb=4096",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
        str(corpus),
        str(seeds),
    ]
    start = time.monotonic()
    proc = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=max_seconds + 120,
        env={**os.environ, **(env or {})},
    )
    output = proc.stdout + proc.stderr
    report = AtherisReport(seconds=time.monotonic() - start, exit_status=proc.returncode)
    done = re.search(r"Done (\d+) runs", output)
    report.runs = int(done.group(1)) if done else 0
    if not done:
        executed = re.findall(r"stat::number_of_executed_units:\s*(\d+)", output)
        report.runs = int(executed[-1]) if executed else 0
    cov = re.findall(r"cov: (\d+) ft: (\d+)", output)
    if cov:
        report.coverage, report.features = int(cov[-1][0]), int(cov[-1][1])
    report.crashed = proc.returncode != 0 or "Uncaught Python exception" in output
    report.output_tail = output[-4000:]
    return report


def _atheris_child(argv: list[str]) -> None:
    """libFuzzer's main: instrument the appliance's functions (and the stdlib date parser the
    wire code relies on) for coverage; ``instrument_all`` would take half a minute."""
    import gc
    import types

    import atheris

    _atheris_targets()
    roots = (str(REPO / "appliance"), str(Path(re.__file__).parent / "email"))
    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType) and obj.__code__.co_filename.startswith(roots):
            try:
                atheris.instrument_func(obj)
            except Exception as exc:  # noqa: BLE001 - an uninstrumented function only costs coverage
                print(f"not instrumented: {obj.__qualname__}: {exc}", file=sys.stderr)
    atheris.Setup([sys.argv[0], *argv], atheris_one_input)
    atheris.Fuzz()


# ---------------------------------------------------------------------------------------------
# Live fuzzing of a real server process


@dataclasses.dataclass
class LiveReport:
    inputs: int = 0
    by_channel: dict[str, int] = dataclasses.field(default_factory=dict)
    replies: int = 0
    jobs_during: int = 0
    jobs_during_fuzz_nodes: int = 0
    final_job: str = ""
    availability_checks: int = 0
    seconds: float = 0.0
    rss_before_kb: int = 0
    rss_after_kb: int = 0
    received: dict[str, int] = dataclasses.field(default_factory=dict)
    dropped_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


HEARTBEAT_PREFIX = wire.format_header(wire.RSA, "")
SETTLED_MESSAGES_PER_POLL = 20
MAX_RSS_GROWTH_KB = 256_000  # the live fuzz must not grow the server by more than this
ZMTP_SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"


def zmtp_frame(data: bytes, *, command: bool = False, more: bool = False) -> bytes:
    """One ZMTP 3.0 frame (short or long form)."""
    flags = (0x04 if command else 0) | (0x01 if more else 0)
    if len(data) <= 255:
        return bytes([flags, len(data)]) + data
    return bytes([flags | 0x02]) + len(data).to_bytes(8, "big") + data


def zmtp_subscriber(port: int, timeout: float = 5.0) -> Any:
    """A raw TCP connection that did the ZMTP 3.0 NULL handshake as a SUB: subscriptions sent
    on it (``zmtp_frame(b"\\x01" + topic)``) are not kept by a local libzmq socket (an XSUB
    keeps its own subscription trie, which a multi-megabyte topic overflows on close)."""
    import socket

    conn = socket.create_connection(("127.0.0.1", port), timeout)
    conn.sendall(ZMTP_SIGNATURE + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32)
    greeting = b""
    while len(greeting) < 64:
        chunk = conn.recv(64 - len(greeting))
        if not chunk:
            raise ConnectionError("closed during the greeting")
        greeting += chunk
    ready = b"\x05READY" + b"\x0bSocket-Type" + (3).to_bytes(4, "big") + b"SUB"
    conn.sendall(zmtp_frame(ready, command=True))
    return conn


def raw_zmtp_garbage(rng: random.Random) -> bytes:
    """Bytes for a raw TCP connection: ZMTP greetings (any mechanism), commands, or noise."""
    r = rng.random()
    if r < 0.3:
        return rng.randbytes(rng.choice((1, 10, 64, rng.randrange(0, 5000))))
    mechanism = rng.choice((b"NULL", b"CURVE", b"PLAIN", b"GSSAPI", rng.randbytes(5)))
    greeting = (
        ZMTP_SIGNATURE
        + bytes([rng.choice((3, 3, 2, 1, 255)), rng.choice((0, 1))])
        + mechanism.ljust(20, b"\x00")[:20]
        + bytes([rng.choice((0, 1))])
        + b"\x00" * 31
    )
    if r < 0.5:
        return greeting[: rng.randrange(len(greeting) + 1)]
    name = rng.choice((b"READY", b"HELLO", b"INITIATE", b"ERROR", b"SUBSCRIBE", b"PING"))
    command = bytes([len(name)]) + name + rng.randbytes(rng.choice((0, 10, 200, 300)))
    flags = rng.choice((0x04, 0x06, 0x00, 0x02, 0xFF))
    if flags & 0x02:
        frame = bytes([flags]) + len(command).to_bytes(8, "big") + command
    else:
        frame = bytes([flags, min(len(command), 255)]) + command
    if rng.random() < 0.2:  # a huge announced length
        frame = bytes([0x06]) + rng.choice((2**63 - 1, 2**40, 70_000)).to_bytes(8, "big")
    return greeting + frame + rng.randbytes(rng.randrange(0, 100))


def run_live(
    inputs: int,
    seed: int,
    workdir: Path,
    *,
    max_seconds: float = 1800.0,
    progress: Callable[[str], None] | None = None,
    heartbeat_interval: int = 500,
) -> LiveReport:
    """Fuzz a real server's ports while a real node heartbeats and runs jobs; see module doc."""
    import socket
    import threading

    import zmq

    from tests.support import Chef, ClientFleet, Server, WireNode

    rng = random.Random(seed)
    report = LiveReport()
    channels: Counter[str] = Counter()
    failures = report.failures
    stop = threading.Event()
    start = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    server = Server(
        workdir / "state",
        heartbeat_interval=heartbeat_interval,
        log_level="info",
        voting_timeout=2,
        wait_complete_time=0.5,
    ).start()
    ctx = zmq.Context()
    fleet: ClientFleet | None = None
    threads: list[threading.Thread] = []
    sockets: list[Any] = []
    fuzzers: list[WireNode] = []
    try:
        fleet = ClientFleet(server, ORG, workdir / "clients")
        fleet.add("realnode", whitelist='{"hello"=>"echo hello","nap"=>"sleep 0.2"}')
        for name in FUZZ_NODES:
            r = fleet.admin.post(
                f"/organizations/{ORG}/clients", {"name": name, "create_key": True}
            )
            assert r.status_code == 201, r.text
            node = WireNode(server, ORG, name, r.json()["chef_key"]["private_key"], ctx=ctx)
            node.connect()
            node.dealer.sndtimeo = 0
            node.dealer.sndhwm = 1000
            fuzzers.append(node)
        fleet.wait_available("realnode", seconds=60)
        report.rss_before_kb = _rss_kb(server.proc.pid)
        ports = server.ports
        command_port, pub_port = ports["command_port"], ports["server_heartbeat_port"]

        # The real node: always online; jobs on it complete, during the fuzz and after.
        def watch_and_run() -> None:
            chef = Chef(server.url, "pivotal", server.pivotal_key.read_bytes())
            base = f"/organizations/{ORG}/pushy"
            last_job = 0.0
            started = 0
            while not stop.is_set():
                try:
                    r = chef.get(f"{base}/node_states/realnode")
                    state = r.json()
                    report.availability_checks += 1
                    if r.status_code != 200 or state.get("status") != "online":
                        failures.append(f"the real node went offline: {state}")
                    if time.monotonic() - last_job > 1.0:
                        last_job = time.monotonic()
                        started += 1
                        nodes = ["realnode"]
                        fuzz_too = started % 3 == 0
                        if fuzz_too:
                            nodes = list(FUZZ_NODES)
                        r = chef.post(
                            f"{base}/jobs",
                            {"command": "hello", "nodes": nodes, "run_timeout": 3},
                        )
                        if r.status_code != 201:
                            failures.append(f"job creation refused: {r.status_code} {r.text}")
                            continue
                        job_id = r.json()["id"]
                        deadline = time.monotonic() + 30
                        while time.monotonic() < deadline and not stop.is_set():
                            job = chef.get(f"{base}/jobs/{job_id}").json()
                            if job["status"] not in ("new", "voting", "running"):
                                break
                            time.sleep(0.05)
                        else:
                            if not stop.is_set():
                                failures.append(f"job {job_id} on {nodes} did not end: {job}")
                            continue
                        if fuzz_too:
                            report.jobs_during_fuzz_nodes += 1
                        else:
                            report.jobs_during += 1
                            if job["status"] != "complete" or job["nodes"] != {
                                "succeeded": ["realnode"]
                            }:
                                failures.append(f"job on the real node: {job}")
                except Exception as exc:  # noqa: BLE001 - reported, not raised in a thread
                    failures.append(f"watcher: {exc!r}")
                time.sleep(0.1)

        threads.append(threading.Thread(target=watch_and_run, daemon=True))
        for t in threads:
            t.start()

        def plain_dealer() -> zmq.Socket:
            """A DEALER without CURVE: the server refuses its handshake, so it queues up to
            its HWM and no further; each new one is one more refused handshake."""
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.sndtimeo = 0
            sock.sndhwm = 10
            sock.connect(f"tcp://127.0.0.1:{command_port}")
            sockets.append(sock)
            return sock

        plain = plain_dealer()
        xsub = ctx.socket(zmq.XSUB)
        xsub.linger = 0
        xsub.sndtimeo = 0
        xsub.connect(f"tcp://127.0.0.1:{pub_port}")
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.rcvhwm = 10
        sub.connect(f"tcp://127.0.0.1:{pub_port}")
        sockets += [xsub, sub]
        raw: dict[int, socket.socket | None] = {command_port: None, pub_port: None}
        zsub: socket.socket | None = None

        identities = [Identity(ORG, n.name, n.session_key, n.incarnation) for n in fuzzers]
        identities.append(Identity(ORG, "realnode", None, "whatever"))  # impersonation
        identities.append(Identity("otherorg", "fuzz1", None, "x"))
        maker = MessageMaker(rng, identities, job_ids=lambda: list(known_jobs), big_share=0.002)
        known_jobs: list[str] = []
        session_keys = [n.session_key for n in fuzzers]
        sent = 0
        next_check = 0
        while sent < inputs and time.monotonic() - start < max_seconds:
            if sent >= next_check:
                next_check = sent + 2000
                if server.proc.poll() is not None:
                    failures.append(f"the server exited: {server.proc.returncode}")
                    break
                _settle(server, fuzzers, session_keys, report, failures)
                if progress and sent and sent % 20_000 < 2000:
                    progress(f"live: {sent} inputs, {dict(channels)}")
                r = fleet.admin.get(f"/organizations/{ORG}/pushy/jobs")
                if r.status_code == 200:
                    known_jobs[:] = [j["id"] for j in r.json()[-5:]]
            r = rng.random()
            now = time.time()
            try:
                if r < 0.9:
                    node = rng.choice(fuzzers)
                    node.dealer.send_multipart(maker.frames(now) or [b""])
                    channels["curve_dealer"] += 1
                elif r < 0.93:
                    try:
                        plain.send_multipart(maker.frames(now) or [b""])
                    except zmq.Again:
                        sockets.remove(plain)
                        plain.close(linger=0)
                        plain = plain_dealer()
                        channels["plain_dealer_handshakes"] += 1
                    else:
                        channels["plain_dealer"] += 1
                elif r < 0.96:
                    frame = rng.choice(
                        (
                            b"\x01" + rng.randbytes(rng.randrange(0, 100)),
                            b"\x00" + rng.randbytes(rng.randrange(0, 100)),
                            b"\x01" + HEARTBEAT_PREFIX[: rng.randrange(len(HEARTBEAT_PREFIX))],
                            rng.randbytes(rng.randrange(0, 2000)),
                            b"",
                        )
                    )
                    xsub.send_multipart([frame] * rng.choice((1, 1, 2)))
                    channels["xsub"] += 1
                elif r < 0.97:
                    option = zmq.SUBSCRIBE if rng.random() < 0.7 else zmq.UNSUBSCRIBE
                    sub.setsockopt(option, rng.randbytes(rng.randrange(0, 64)))
                    channels["sub"] += 1
                elif r < 0.98:  # subscriptions over raw ZMTP, some far beyond any sound size
                    if zsub is None:
                        zsub = zmtp_subscriber(pub_port)
                        zsub.setblocking(False)
                    size = rng.choice((0, 1, 10, 100, 255, 256, 300, 70_000, 2_000_000))
                    if size > 300 and rng.random() < 0.9:
                        size = rng.randrange(0, 300)
                    frame = zmtp_frame(rng.choice((b"\x01", b"\x00")) + rng.randbytes(1) * size)
                    try:
                        if size > 300:
                            zsub.settimeout(5)
                            zsub.sendall(frame)
                            zsub.setblocking(False)
                        else:
                            zsub.send(frame)
                        channels["zmtp_sub"] += 1
                    except OSError:  # BlockingIOError, or the server closed it (oversized)
                        zsub.close()
                        zsub = None
                        continue
                else:
                    port = rng.choice((command_port, pub_port))
                    conn = raw.get(port)
                    if conn is None or rng.random() < 0.05:
                        if conn is not None:
                            conn.close()
                        conn = raw[port] = socket.create_connection(("127.0.0.1", port), 5)
                        conn.setblocking(False)
                    try:
                        conn.send(raw_zmtp_garbage(rng))
                        channels["raw_tcp_command" if port == command_port else "raw_tcp_pub"] += 1
                    except (BlockingIOError, OSError):
                        conn.close()
                        raw[port] = None
                        continue
            except zmq.Again:
                _drain(fuzzers, session_keys, report, failures)
                time.sleep(0.001)
                continue
            sent += 1
            if sent % 64 == 0:
                _drain(fuzzers, session_keys, report, failures)
                while sub.poll(0):
                    sub.recv_multipart()
        report.inputs = sent
        if server.proc.poll() is None:
            _settle(server, fuzzers, session_keys, report, failures)
        deadline = time.monotonic() + 60  # at least one real-node job overlaps the fuzz
        while report.jobs_during < 1 and time.monotonic() < deadline and not failures:
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(timeout=40)
        for conn in [*raw.values(), zsub]:
            if conn is not None:
                conn.close()

        # After the fuzz: alive, answering, the real node available, a job completes.
        if server.proc.poll() is not None:
            failures.append("the server is not running after the fuzz")
        else:
            status = server.status()
            if status.get("status") != "it's alive":
                failures.append(f"/pushy/_status: {status}")
            fleet.wait_available("realnode", seconds=30)
            job = fleet.run("hello", ["realnode"], seconds=30)
            report.final_job = job["status"]
            if job["status"] != "complete" or job["nodes"] != {"succeeded": ["realnode"]}:
                failures.append(f"the job after the fuzz: {job}")
            report.rss_after_kb = _rss_kb(server.proc.pid)
            if report.rss_after_kb - report.rss_before_kb > MAX_RSS_GROWTH_KB:
                failures.append(
                    f"the server grew from {report.rss_before_kb} to {report.rss_after_kb} kB"
                )
        log_text = server.log_path.read_text(errors="replace")
        for pattern in ("node fuzzorg/realnode is offline", "Traceback", "internal_error"):
            if pattern in log_text:
                failures.append(f"server log has {pattern!r}")
        if server.proc.poll() is None:
            counters = _counters(server)
            report.received = counters.get("received", {})
            report.dropped_reasons = counters.get("dropped", {})
            if report.dropped_reasons.get("internal_error"):
                failures.append(f"internal errors in the reactor: {report.dropped_reasons}")
        client_log = fleet.clients["realnode"].log_path.read_text(errors="replace")
        if "Traceback" in client_log:
            failures.append("the real node's log has a Traceback")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
        for node in fuzzers:
            node.close()
        for sock in sockets:
            sock.close(linger=0)
        if fleet is not None:
            fleet.close()
        server.stop()
        ctx.destroy(linger=0)
    report.by_channel = dict(channels)
    report.seconds = time.monotonic() - start
    return report


def _counters(server: Any) -> dict[str, dict[str, int]]:
    import httpx

    r = httpx.get(f"{server.url}/pushy/_status", params={"counters": "true"}, timeout=30)
    return r.json().get("counters", {})


def _settle(
    server: Any, fuzzers: list[Any], keys: list[bytes], report: LiveReport, failures: list[str]
) -> None:
    """Wait (bounded) until the reactor has worked off what was sent: its message counters
    move no faster than the real node's own traffic (a beat and a few job messages per poll).
    Keeps the backlog small, so the fuzz is processed while the real node is watched."""
    last = -1_000_000
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _drain(fuzzers, keys, report, failures)
        counters = _counters(server)
        total = sum(sum(counters[k].values()) for k in ("received", "dropped"))
        if total - last <= SETTLED_MESSAGES_PER_POLL:
            return
        last = total
        time.sleep(0.2)
    failures.append("the reactor did not work off the fuzz within 60 s")


def _drain(fuzzers: list[Any], keys: list[bytes], report: LiveReport, failures: list[str]) -> None:
    """Read what the server sent to the fuzzing DEALERs: each must be a sound signed message."""
    import zmq

    for node in fuzzers:
        for _ in range(1000):
            try:
                frames = node.dealer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            report.replies += 1
            if len(frames) != 2 or not any(
                _client_accepts(frames, key) for key in keys if key is not None
            ):
                failures.append(f"an unsound reply from the server: {frames!r:.200}")


def _client_accepts(frames: list[bytes], key: bytes) -> bool:
    try:
        wire.check_client_inbound(
            frames[0],
            frames[1],
            session_key=key,
            server_public_key=None,
            now=time.time(),
            max_skew=300,
        )
    except wire.MessageError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# The command line


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--atheris-child":
        _atheris_child(argv[1:])
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m tests.campaigns.fuzz_wire", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--inputs", type=int, default=1_000_000, help="pure inputs in all")
    parser.add_argument(
        "--atheris-share", type=float, default=0.4, help="share of --inputs run by atheris"
    )
    parser.add_argument("--live-inputs", type=int, default=None, help="default: inputs / 10")
    parser.add_argument(
        "--hypothesis-examples",
        type=int,
        default=1000,
        help="examples per property test (counted in the pure inputs)",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=3 * 3600)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    live_inputs = args.live_inputs if args.live_inputs is not None else args.inputs // 10
    atheris_runs = int(args.inputs * args.atheris_share)
    pure_inputs = args.inputs - atheris_runs

    def say(text: str) -> None:
        print(f"[fuzz_wire] {text}", file=sys.stderr, flush=True)

    say(f"seed {seed}: {pure_inputs} pure, {atheris_runs} atheris, {live_inputs} live inputs")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fuzz_wire-"))
    budget = args.max_seconds
    failures = 0
    started = time.monotonic()

    hyp_examples = 0
    if args.hypothesis_examples:
        hyp = run_hypothesis(args.hypothesis_examples, seed, max_seconds=int(budget / 4))
        hyp_examples = hyp.examples
        say(
            f"hypothesis: {hyp.examples} examples over {hyp.tests} properties in "
            f"{hyp.seconds:.0f} s ({hyp.examples / max(hyp.seconds, 1e-9):.0f}/s), "
            f"{hyp.failing} failing, exit {hyp.exit_status}"
        )
        if hyp.exit_status != 0 or hyp.failing:
            failures += 1
            say(f"  FAIL hypothesis:\n{hyp.output_tail}")
    pure_inputs = max(0, pure_inputs - hyp_examples)
    pure = run_pure(pure_inputs, seed, max_seconds=budget / 3, progress=say)
    say(
        f"pure: {pure.server_inputs} server + {pure.client_inputs} client inputs in "
        f"{pure.seconds:.0f} s "
        f"({(pure.server_inputs + pure.client_inputs) / max(pure.seconds, 1e-9):.0f}/s)"
        f", {pure.accepted} passed the wire checks, {pure.replies} replies, "
        f"{pure.jobs_created} jobs; slowest input {pure.slowest * 1000:.1f} ms; "
        f"{len(pure.failures)} failures"
    )
    for failure in pure.failures[:10]:
        say(f"  FAIL {failure}")
    failures += len(pure.failures)

    ath_runs = 0
    if atheris_runs:
        ath = run_atheris(atheris_runs, seed, workdir, max_seconds=int(budget / 3))
        say(
            f"atheris: {ath.runs} runs in {ath.seconds:.0f} s "
            f"({ath.runs / max(ath.seconds, 1e-9):.0f}/s), cov {ath.coverage} ft {ath.features}, "
            f"exit {ath.exit_status}"
        )
        ath_runs = ath.runs
        if ath.crashed or ath.runs < atheris_runs:
            failures += 1
            say(f"  FAIL atheris:\n{ath.output_tail}")

    live_sent = 0
    if live_inputs:
        live = run_live(live_inputs, seed, workdir / "live", max_seconds=budget / 3, progress=say)
        say(
            f"live: {live.inputs} inputs in {live.seconds:.0f} s "
            f"({live.inputs / max(live.seconds, 1e-9):.0f}/s) {live.by_channel}; "
            f"{sum(live.received.values())} valid node messages reached the node and job "
            f"code; {live.replies} replies; {live.jobs_during} real-node jobs and "
            f"{live.jobs_during_fuzz_nodes} fuzz-node jobs during the fuzz; final job "
            f"{live.final_job}; {live.availability_checks} availability checks; server RSS "
            f"{live.rss_before_kb} -> {live.rss_after_kb} kB; drops {live.dropped_reasons}"
        )
        for failure in live.failures[:10]:
            say(f"  FAIL {failure}")
        failures += len(live.failures) + (live.inputs < live_inputs)
        live_sent = live.inputs
    pure_total = hyp_examples + pure.server_inputs + pure.client_inputs + ath_runs
    say(
        f"seed {seed}: {pure_total} pure inputs (hypothesis {hyp_examples}, random "
        f"{pure.server_inputs + pure.client_inputs}, atheris {ath_runs}), {live_sent} live "
        f"inputs, {time.monotonic() - started:.0f} s, {failures} failures"
    )
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
