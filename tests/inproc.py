"""The server's shells in the test's own trio run, on the server's clock.

``inproc_server`` assembles the real parts exactly as ``pushy server`` does
(``server.main.build_context``): the store with its committer writing a real log in a temporary
directory, the dispatcher, the timers (job supervisors, liveness scanner, rehab timer), the
reactor's message checks. Only the ROUTER socket is a fake that keeps what the server sends.
Under ``trio.testing.MockClock`` a voting timeout of 60 s takes a few milliseconds of real time,
and so do liveness, rehab and the linger window. Tests move time with ``advance`` (small jumps,
each followed by every task settling) rather than autojump: the log's writes run in a worker
thread, and an autojump while one is under way would move time by an amount that depends on the
disk.

``WireNodes`` and the real server process are in tests/e2e; this harness is for the shells'
timing and ordering, where a real clock would make a test slow or flaky.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import trio
import trio.testing

from appliance.core import identity, records, wire
from appliance.core.jobspec import JobSpec
from appliance.core.keys import generate_rsa, public_pem
from appliance.core.settings import Settings
from appliance.server.advertise import Advertiser
from appliance.server.app import create_app
from appliance.server.clock import Clock
from appliance.server.context import ServerContext
from appliance.server.main import build_context
from appliance.server.store import Store
from tests.support import sign

EPOCH = 1_750_000_000.0  # the server clock's reading at trio time 0
ORG = "acme"
ORG_GUID = "0123456789abcdef0123456789abcdef"  # jobs made without the HTTP side


@functools.cache
def superuser_key() -> Any:
    """The superuser's key, one per test session: making a key takes a while."""
    return generate_rsa(2048)


class FakeRouter:
    """Stands in for the ROUTER socket: every message the server sends is kept, by address."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []

    def send_nowait(self, frames: list[bytes]) -> bool:
        self.sent.append(frames)
        return True

    def pending(self) -> bool:
        return False  # the tests hand messages to the dispatcher directly

    def close(self) -> None:
        pass


@dataclass
class InNode:
    """A node as the server sees it: its key, address and message counter."""

    server: InProc
    name: str
    key: bytes
    address: bytes
    incarnation: str = "inc-1"
    sequence: int = 0
    job_id: str | None = None
    job_state: str = "idle"

    def send(self, kind: str, **extra: Any) -> None:
        """One signed message, through the reactor's checks, now."""
        self.sequence += 1
        now = self.server.ctx.clock.now()
        body = wire.node_message(
            node=self.name,
            client=f"{self.name}.example",
            org=ORG,
            type=kind,
            sequence=self.sequence,
            t=now,
            incarnation=self.incarnation,
            job_id=extra.pop("job_id", self.job_id),
            job_state=self.job_state if kind == "heartbeat" else None,
            **extra,
        )
        ctx = self.server.ctx
        ctx.reactor.handle_frames(
            [self.address, *wire.hmac_frames(self.key, body)], now, ctx.dispatcher.node_message
        )

    def received(self) -> list[dict[str, Any]]:
        """Bodies the server sent this node so far, oldest first."""
        return [
            orjson.loads(frames[2])
            for frames in self.server.router.sent
            if frames[0] == self.address
        ]

    def types(self) -> list[str]:
        return [m["type"] for m in self.received()]

    async def beat_for(self, seconds: float) -> None:
        """Heartbeat at the server's interval for ``seconds`` of (virtual) time."""
        interval = self.server.ctx.settings.heartbeat_seconds
        end = trio.current_time() + seconds
        while trio.current_time() < end:
            self.send("heartbeat")
            await trio.sleep(interval)


async def advance(clock: trio.testing.MockClock, seconds: float, step: float = 0.25) -> None:
    """Let ``seconds`` of server time pass, in ``step`` jumps; every timer due in a jump fires
    and every task it woke settles before the next jump."""
    end = trio.current_time() + seconds
    while trio.current_time() < end - 1e-9:
        clock.jump(min(step, end - trio.current_time()))
        await trio.testing.wait_all_tasks_blocked()


@dataclass
class InProc:
    ctx: ServerContext
    router: FakeRouter
    nodes: dict[str, InNode] = field(default_factory=dict)
    http: Any = None  # the Quart test client of the real app (``inproc_server(http=True)``)

    async def node(self, name: str) -> InNode:
        """A node with a session key (as after its config fetch), online and available."""
        key = os.urandom(32)
        await self.ctx.store.durable(
            [records.session_key(ORG, name, key, t=self.ctx.clock.now(), grace=60.0)]
        )
        node = self.nodes[name] = InNode(self, name, key, f"\x00{name}".encode())
        node.send("heartbeat")
        node.send("aborted")  # answers the first contact's abort: rehab -> idle
        assert self.available(name), f"{name} did not become available"
        return node

    def available(self, name: str) -> bool:
        found = self.ctx.dispatcher.table.online((ORG, name))
        return found is not None and found.available

    async def job(self, *names: str, quorum: int | None = None, run_timeout: int = 3600) -> str:
        spec = JobSpec(
            command="chef-client",
            nodes=tuple(names),
            quorum=len(names) if quorum is None else quorum,
            run_timeout=run_timeout,
        )
        org = self.ctx.state.identity.orgs.get(ORG)
        guid = org.guid if org is not None else ORG_GUID
        job = await self.ctx.dispatcher.create_job(ORG, guid, spec, "pivotal")
        return job.id

    def status(self, job_id: str) -> tuple[str, dict[str, str]]:
        job = self.ctx.state.jobs[job_id]
        return job.status, dict(job.nodes)

    def headers(self, method: str, path: str, body: bytes = b"", **extra: str) -> dict[str, str]:
        """The superuser's signed headers, dated by the server's clock (a real clock would be
        far outside the signature window of a server running in virtual time)."""
        signed = sign(
            superuser_key(), "pivotal", method, path, body, timestamp=self.ctx.clock.now()
        )
        return {**signed, "Accept": "application/json", **extra}

    async def read_stream(
        self, path: str, clock: trio.testing.MockClock, seconds: float, **headers: str
    ) -> bytes:
        """GET a streaming route (an SSE feed) through the real app; return what it sent while
        ``seconds`` of server time passed. The stream is then ended as a server shutdown ends
        it (the test client does not pass a reader's disconnect on to the app), and the
        server's shutdown event is made new again for the next request."""
        assert self.http is not None
        chunks = bytearray()
        done = trio.Event()
        request = self.http.request(path, headers=self.headers("GET", path, **headers))

        async def session() -> None:
            async with request as conn:
                await conn.send_complete()
                with contextlib.suppress(trio.EndOfChannel):
                    while not done.is_set():
                        chunks.extend(await conn.receive())
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(session)
            await advance(clock, seconds)
            seen = bytes(chunks)
            self.ctx.shutdown.set()
            for _ in range(10):
                if done.is_set():
                    break
                await advance(clock, 0.5)
            assert done.is_set(), "the stream did not end at the server's shutdown"
        self.ctx.shutdown = trio.Event()
        return seen


async def _create_org(srv: InProc) -> None:
    body = orjson.dumps({"name": ORG, "full_name": ORG})
    headers = srv.headers("POST", "/organizations", body, **{"Content-Type": "application/json"})
    response = await srv.http.post("/organizations", data=body, headers=headers)
    assert response.status_code == 201, await response.get_data()


@asynccontextmanager
async def inproc_server(
    directory: Path, *, http: bool = False, **settings: Any
) -> AsyncIterator[InProc]:
    """The server's parts in this trio run (see the module docstring); ``settings`` override
    the defaults. Leaves the log in ``directory``. With ``http``, the real Quart app answers
    through ``InProc.http`` (its test client), the superuser ``pivotal`` and the org ``acme``
    exist, and ``job`` is posted in that org."""
    s = Settings(state_dir=str(directory), **{"edge_processes": 0, **settings})
    store = Store(directory, segment_max_bytes=s.log_segment_max_bytes, retention_days=0)
    store.load()
    if store.state.server is None:
        store.initialise(
            [
                records.server_init(
                    incarnation="inc-server",
                    curve_public="",
                    curve_secret="",
                    rsa_public_pem="",
                    t=EPOCH,
                ),
                *identity.bootstrap_superuser(
                    store.state.identity, public_pem(superuser_key()), name="pivotal"
                ),
            ]
        )
    clock = Clock(start=EPOCH, follow_system=False)
    ctx = build_context(
        s, store, None, clock=clock, advertiser=Advertiser("inproc.example"), hostname="inproc"
    )
    ctx.reactor.ctx.term()  # no sockets: the ROUTER is a fake
    router = FakeRouter()
    ctx.reactor.router = router  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run, clock)
        async with trio.open_nursery() as services:
            ctx.dispatcher.resume(clock.now())
            await services.start(ctx.timers.run)
            srv = InProc(ctx, router)
            if not http:
                yield srv
            else:
                # without the app's lifespan: its one serving task, the SSE stall watch, runs
                # until cancelled and is not what these tests are about
                srv.http = create_app(ctx).test_client()
                if ORG not in ctx.state.identity.orgs:
                    await _create_org(srv)
                yield srv
            services.cancel_scope.cancel()
        store.close()
    store.log.close()
