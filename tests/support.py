"""Real parts for end-to-end tests: the server process, a Chef-signing HTTP client, a node.

``Server`` runs ``python -m appliance server`` on 127.0.0.1 with free ports and a temporary
state directory (``server_fixture`` makes a pytest fixture of one); ``Chef`` signs requests like
knife; ``new_user``/``set_group`` set up identities; ``wait_for`` is the bounded polling loop;
``WireNode`` speaks the node protocol (config fetch, CURVE DEALER + SUB, HMAC-signed two-frame
messages) the way the original client does, at the protocol level, so tests can drive every
message by hand. The job-level helpers (``Node``, ``Fleet``, ``Feed``, ...) are in
tests/e2e/helpers.py.
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import zmq

from appliance.core import chefauth, wire
from appliance.core.keys import decrypt_session_key, load_private_pem, load_public_pem
from appliance.core.rsaraw import rsa_sha1_verify
from appliance.localserver import LocalServer, ManagedProcess

REPO = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 60


class Server(LocalServer):
    """The server under test: debug logging, a 200 ms heartbeat unless told otherwise."""

    def __init__(self, state_dir: Path, **settings: Any) -> None:
        super().__init__(
            state_dir,
            cwd=REPO,
            startup_seconds=STARTUP_SECONDS,
            **{"heartbeat_interval": 200, "log_level": "debug", **settings},
        )
        self.verify: Any = True  # httpx's verify= for the tests' own requests (HTTPS tests)

    def start(self, *extra: str) -> Server:
        super().start(*extra)
        return self

    def __enter__(self) -> Server:
        return self.start()

    def status(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/pushy/_status", timeout=10, verify=self.verify).json()


def server_fixture(name: str, *, scope: str = "module", **settings: Any) -> Any:
    """A pytest fixture: one ``Server(**settings)`` per ``scope``, killed at its end."""

    @pytest.fixture(scope=scope)
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
        with Server(tmp_path_factory.mktemp(name) / "state", **settings) as srv:
            yield srv

    return fixture


def wait_for(
    predicate: Callable[[], Any],
    seconds: float = 10.0,
    nodes: Iterable[Any] = (),
    *,
    step: float = 0.02,
    what: str = "condition",
) -> Any:
    """Poll ``predicate`` until it is truthy (returned); ``node.tick()`` each of ``nodes``
    before every poll (so they keep heartbeating even when the predicate holds at once: a test
    looping over quick waits must not starve the nodes' heartbeats)."""
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        for node in nodes:
            node.tick()
        last = predicate()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"{what}: not met within {seconds} s (last value {last!r})")


def sign(
    key: Any,
    user: str,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    version: str = "1.3",
    timestamp: float | None = None,
) -> dict[str, str]:
    """Chef signing headers for ``path`` (query left out), as knife sends them.

    ``key`` is a private key or its PEM text."""
    if isinstance(key, str | bytes):
        key = load_private_pem(key)
    return chefauth.sign_request(
        key=key,
        user_id=user,
        method=method,
        path=urllib.parse.urlsplit(path).path,
        body=body,
        timestamp=chefauth.format_timestamp(time.time() if timestamp is None else timestamp),
        version=version,
    )


_SIGNED_AT: dict[tuple[str, str], int] = {}  # Chef(distinct_seconds=True)'s last second per user


class Chef:
    """A signed HTTP client, as knife or mixlib-authentication would sign (protocol 1.3)."""

    def __init__(
        self,
        base_url: str,
        user: str,
        key_pem: str | bytes,
        version: str = "1.3",
        verify: Any = True,
        *,
        distinct_seconds: bool = False,
    ) -> None:
        self.base_url = base_url
        self.user = user
        self.key_pem = key_pem
        self.key = load_private_pem(key_pem)
        self.version = version
        self.http = httpx.Client(base_url=base_url, timeout=30, verify=verify)
        self.distinct_seconds = distinct_seconds

    def headers(
        self, method: str, path: str, body: bytes, *, timestamp: float | None = None
    ) -> dict[str, str]:
        if timestamp is None and self.distinct_seconds:
            # a second after the last request this user signed so, by any Chef of the process:
            # never the same signature twice (a node's own config fetch sent again is a replay,
            # which gets the key it was given and refuses another ccpk; core.servedfetches)
            who = (self.base_url, self.user)
            timestamp = max(math.floor(time.time()), _SIGNED_AT.get(who, 0) + 1)
            _SIGNED_AT[who] = timestamp
        return sign(
            self.key, self.user, method, path, body, version=self.version, timestamp=timestamp
        )

    def request(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timestamp: float | None = None,
    ) -> httpx.Response:
        body = (
            raw
            if raw is not None
            else (b"" if json_body is None else json.dumps(json_body).encode())
        )
        h = {"Accept": "application/json", **self.headers(method, path, body, timestamp=timestamp)}
        if body:
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        return self.http.request(method, path, content=body, headers=h)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, json_body: Any = None, **kw: Any) -> httpx.Response:
        return self.request("POST", path, json_body, **kw)

    def put(self, path: str, json_body: Any = None, **kw: Any) -> httpx.Response:
        return self.request("PUT", path, json_body, **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", path, **kw)

    def sse(
        self,
        path: str,
        *,
        last_event_id: str | None = None,
        seconds: float = 30,
        until: str | None = "job_complete",
    ) -> list[tuple[str, str, dict]]:
        """Read an SSE stream until it ends, ``until`` arrives, or ``seconds`` pass."""
        h = {"Accept": "text/event-stream", **self.headers("GET", path, b"")}
        if last_event_id is not None:
            h["Last-Event-ID"] = last_event_id
        events: list[tuple[str, str, dict]] = []
        deadline = time.monotonic() + seconds
        with self.http.stream("GET", path, headers=h, timeout=seconds) as r:
            assert r.status_code == 200, r.read()
            for event in parse_sse(r.iter_lines()):
                events.append(event)
                if until is not None and event[0] == until:
                    break
                if time.monotonic() > deadline:
                    break
        return events


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, str, dict]]:
    """A strict parser: an event is emitted only at its terminating blank line."""
    name = ident = data = None
    for line in lines:
        if line == "":
            if name is not None:
                yield name, ident or "", json.loads(data or "{}")
            name = ident = data = None
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "id":
                ident = value
            elif field == "data":
                data = value


def setup_org(
    server: Server, org: str = "testorg", nodes: tuple[str, ...] = ("node1",)
) -> tuple[Chef, dict[str, str]]:
    """An org with the given node clients; returns the superuser client and each node's key."""
    admin = Chef(server.url, "pivotal", server.pivotal_key.read_bytes(), verify=server.verify)
    r = admin.post("/organizations", {"name": org, "full_name": org})
    assert r.status_code == 201, r.text
    keys = {}
    for name in nodes:
        r = admin.post(f"/organizations/{org}/clients", {"name": name, "create_key": True})
        assert r.status_code == 201, r.text
        keys[name] = r.json()["chef_key"]["private_key"]
    return admin, keys


def pushy_as_pivotal(server: Server, *argv: str) -> subprocess.CompletedProcess:
    """``pushy ARGV`` in a subprocess, signed as the superuser, configured by nothing else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PUSHY_", "CHEF_"))}
    env.update(
        PUSHY_SERVER_URL=server.url,
        PUSHY_USER="pivotal",
        PUSHY_KEY=str(server.pivotal_key),
        PYTHONPATH=str(REPO),
        HOME=str(server.state_dir),
    )
    command = [sys.executable, "-m", "appliance", *argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)


def error_of(r: httpx.Response) -> object:
    """The ``error`` of a JSON error body."""
    assert r.headers["content-type"].startswith("application/json"), (r.status_code, r.text)
    return r.json()["error"]


def new_user(admin: Chef, name: str, org: str | None = None) -> Chef:
    """A new user with a server-made key (a member of ``org`` if given); its client."""
    r = admin.post("/users", {"username": name, "create_key": True})
    assert r.status_code == 201, r.text
    chef = Chef(admin.base_url, name, r.json()["chef_key"]["private_key"])
    if org is not None:
        r = admin.post(f"/organizations/{org}/users", {"username": name})
        assert r.status_code == 201, r.text
    return chef


def set_group(admin: Chef, org: str, group: str, *, users=(), clients=(), groups=()) -> None:
    """Create the group if needed and set exactly these members."""
    r = admin.get(f"/organizations/{org}/groups/{group}")
    if r.status_code == 404:
        r = admin.post(f"/organizations/{org}/groups", {"groupname": group})
        assert r.status_code == 201, r.text
    body = {"users": list(users), "clients": list(clients), "groups": list(groups)}
    r = admin.put(f"/organizations/{org}/groups/{group}", body)
    assert r.status_code == 200, r.text


class WireNode:
    """One node at the protocol level: config fetch, CURVE DEALER + SUB, signed messages."""

    def __init__(
        self, server: Server, org: str, name: str, key_pem: str, *, ctx: zmq.Context | None = None
    ) -> None:
        self.server = server
        self.org = org
        self.name = name
        self.chef = Chef(server.url, name, key_pem, distinct_seconds=True)
        self.private_key = load_private_pem(key_pem)
        self.ctx = ctx or zmq.Context.instance()
        self.curve_public, self.curve_secret = zmq.curve_keypair()
        self.incarnation = str(uuid.uuid4())
        self.sequence = 0
        self.config: dict[str, Any] = {}
        self.session_key = b""
        self.dealer: zmq.Socket | None = None
        self.sub: zmq.Socket | None = None
        self.job_id: str | None = None
        self.job_state = "idle"

    def fetch_config(self) -> httpx.Response:
        ccpk = urllib.parse.quote_plus(self.curve_public.decode())
        r = self.chef.get(
            f"/organizations/{self.org}/pushy/config/{self.name}?ccpk={ccpk}&version=2.0"
        )
        if r.status_code == 200:
            self.config = r.json()
            self.session_key = decrypt_session_key(
                self.private_key, self.config["encoded_session_key"]["key"]
            )
        return r

    def connect(self, *, curve: bool = True) -> WireNode:
        if not self.config:
            r = self.fetch_config()
            assert r.status_code == 200, r.text
        hb = self.config["push_jobs"]["heartbeat"]
        self.close()
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.linger = 0
        self.dealer.sndhwm = 3
        if curve and "curve_public_key" in self.config:
            self.dealer.curve_serverkey = self.config["curve_public_key"].encode()
            self.dealer.curve_publickey = self.curve_public
            self.dealer.curve_secretkey = self.curve_secret
        self.dealer.connect(hb["command_addr"])
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(hb["out_addr"])
        self.sequence = 0
        return self

    def close(self) -> None:
        for sock in (self.dealer, self.sub):
            if sock is not None:
                sock.close(linger=0)
        self.dealer = self.sub = None

    def body(self, kind: str, **extra: Any) -> dict[str, Any]:
        """A message as the reference client writes it; ``extra`` may add or override fields."""
        self.sequence += 1
        job_id = self.job_id if kind == "heartbeat" else extra.pop("job_id", self.job_id)
        body = wire.node_message(
            node=self.name,
            client="testhost",
            org=self.org,
            type=kind,
            sequence=self.sequence,
            t=time.time(),
            incarnation=self.incarnation,
            job_id=job_id,
            job_state=self.job_state if kind == "heartbeat" else None,
        )
        body.update(extra)
        return body

    def send(self, kind: str, **extra: Any) -> None:
        self.send_frames(wire.hmac_frames(self.session_key, self.body(kind, **extra)))

    def send_frames(self, frames: list[bytes]) -> None:
        assert self.dealer is not None
        self.dealer.send_multipart(frames)

    def recv(
        self, timeout: float = 5.0, *, types: tuple[str, ...] | None = None
    ) -> dict[str, Any] | None:
        """The next valid command-channel message (optionally of given types), or None on timeout."""
        assert self.dealer is not None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.dealer.poll(int(left * 1000)):
                return None
            frames = self.dealer.recv_multipart()
            assert len(frames) == 2, frames
            body = wire.check_client_inbound(
                frames[0],
                frames[1],
                session_key=self.session_key,
                server_public_key=None,
                now=time.time(),
                max_skew=300,
            )
            if types is None or body["type"] in types:
                return body
        return None

    def recv_heartbeat(self, timeout: float = 5.0) -> tuple[list[bytes], dict[str, Any]] | None:
        assert self.sub is not None
        if not self.sub.poll(int(timeout * 1000)):
            return None
        frames = self.sub.recv_multipart()
        pub = load_public_pem(self.config["public_key"])
        header = wire.parse_header(frames[0])
        assert rsa_sha1_verify(pub, frames[1], header.signature or "")
        return frames, json.loads(frames[1])

    def join(self, timeout: float = 10.0) -> None:
        """Heartbeat until the server's opening abort arrives, answer it: the node is available."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.send("heartbeat")
            msg = self.recv(0.5, types=("abort",))
            if msg is not None:
                self.job_id, self.job_state = None, "idle"
                self.send("aborted", job_id=None)
                self.wait_available(deadline - time.monotonic())
                return
        raise AssertionError(f"{self.name} got no abort within {timeout} s")

    def wait_available(self, timeout: float = 10.0) -> None:
        """Poll the REST API until the server has processed our ``aborted``: available."""
        deadline = time.monotonic() + max(timeout, 1.0)
        path = f"/organizations/{self.org}/pushy/node_states/{self.name}"
        while time.monotonic() < deadline:
            if self.chef.get(path).json().get("availability") == "available":
                return
            time.sleep(0.02)
        raise AssertionError(f"{self.name} did not become available within {timeout} s")


def connect_bounded(node: WireNode, ms: int = 5000) -> WireNode:
    """Connect with send/receive timeouts, so that a lost connection fails a test, not hangs it."""
    node.connect()
    for sock in (node.dealer, node.sub):
        sock.sndtimeo = ms
        sock.rcvtimeo = ms
    return node


class ClientProcess(ManagedProcess):
    """A real ``pushy client`` process started from a config file in the original's format."""

    def __init__(
        self,
        server: Server,
        org: str,
        name: str,
        key_pem: str,
        directory: Path,
        *,
        whitelist: str = '{"chef-client"=>"chef-client"}',
        extra: str = "",
    ) -> None:
        self.name = name
        directory.mkdir(parents=True, exist_ok=True)
        self.key_path = directory / f"{name}.pem"
        self.key_path.write_text(key_pem)
        self.key_path.chmod(0o600)
        self.config_path = directory / f"{name}-push-jobs-client.rb"
        self.log_path = directory / f"{name}-client.log"
        self.file_dir = directory / f"{name}-files"
        # what the push-jobs cookbook writes (docs-spec.md §10.2)
        self.config_path.write_text(
            "# Generated by Chef; local changes will be overwritten\n"
            "LC_ALL='en_US.UTF-8'\n"
            f"chef_server_url '{server.url}/organizations/{org}'\n"
            f"node_name '{name}'\n"
            f"client_key '{self.key_path}'\n"
            "trusted_certs_dir '/etc/chef/trusted_certs'\n"
            "verify_api_cert false\n"
            "ssl_verify_mode :verify_peer\n"
            "allow_unencrypted false\n"
            f"file_dir '{self.file_dir}'\n"
            f"{extra}"
            f"whitelist({whitelist})\n"
            "Mixlib::Log::Formatter.show_time = true\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(
        self, *flags: str, env: dict[str, str] | None = None, program: list[str] | None = None
    ) -> ClientProcess:
        """Start it; ``env`` adds to the daemon's environment, ``program`` replaces
        ``python -m appliance client`` (e.g. the ``pushy-client`` console script)."""
        log = open(self.log_path, "ab")
        command = program or [sys.executable, "-m", "appliance", "client"]
        self.proc = subprocess.Popen(
            [*command, "-c", str(self.config_path), *flags],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        log.close()
        return self


# ---------------------------------------------------------------------------------------------
# Real clients of one org (tests/e2e/test_client_*.py)


class ClientFleet:
    """An org on ``server`` and the real ``pushy client`` processes of its nodes."""

    def __init__(self, server: Server, org: str, directory: Path) -> None:
        self.server = server
        self.org = org
        self.directory = directory
        self.admin, _ = setup_org(server, org, ())
        self.clients: dict[str, ClientProcess] = {}

    def add(
        self,
        name: str,
        *,
        whitelist: str = '{"chef-client"=>"chef-client"}',
        extra: str = "",
        env: dict[str, str] | None = None,
        flags: tuple[str, ...] = (),
        program: list[str] | None = None,
        start: bool = True,
    ) -> ClientProcess:
        """Register node ``name`` (a server-made key) and start its client."""
        r = self.admin.post(
            f"/organizations/{self.org}/clients", {"name": name, "create_key": True}
        )
        assert r.status_code == 201, r.text
        key = r.json()["chef_key"]["private_key"]
        client = ClientProcess(
            self.server, self.org, name, key, self.directory, whitelist=whitelist, extra=extra
        )
        self.clients[name] = client
        if start:
            client.start(*flags, env=env, program=program)
        return client

    def add_available(self, names: Iterable[str], **options: Any) -> None:
        """Register and start a client for each of ``names``; wait until all are available."""
        names = list(names)
        for name in names:
            self.add(name, **options)
        self.wait_available(*names)

    def states(self) -> dict[str, str]:
        """node name → availability, as the server lists them."""
        r = self.admin.get(f"/organizations/{self.org}/pushy/node_states")
        assert r.status_code == 200, r.text
        return {s["node_name"]: s["availability"] for s in r.json()}

    def state(self, name: str) -> tuple[str, str]:
        """(status, availability) of one node."""
        r = self.admin.get(f"/organizations/{self.org}/pushy/node_states/{name}")
        assert r.status_code == 200, r.text
        return r.json()["status"], r.json()["availability"]

    def wait_available(self, *names: str, seconds: float = 30) -> None:
        def ready() -> bool:
            for name in names:
                client = self.clients.get(name)
                if client is not None and client.proc is not None:
                    assert client.proc.poll() is None, f"{name} exited:\n{client.log()}"
            states = self.states()
            return all(states.get(n) == "available" for n in names)

        wait_for(ready, seconds, what=f"{names} available")

    def post(self, command: str, nodes: list[str], **opts: Any) -> str:
        body = {"command": command, "nodes": nodes, **opts}
        r = self.admin.post(f"/organizations/{self.org}/pushy/jobs", body)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.admin.get(f"/organizations/{self.org}/pushy/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_job(self, job_id: str, seconds: float = 30) -> dict[str, Any]:
        """The job once it has ended (any status but new/voting/running)."""

        def ended() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] not in ("new", "voting", "running") else None

        return wait_for(ended, seconds, what=f"job {job_id} ended")

    def wait_nodes(self, job_id: str, nodes: dict[str, list[str]], seconds: float = 30) -> None:
        wait_for(lambda: self.job(job_id)["nodes"] == nodes, seconds, what=f"nodes {nodes}")

    def run(self, command: str, nodes: list[str], seconds: float = 30, **opts: Any) -> dict:
        """Post a job and wait for its end."""
        return self.wait_job(self.post(command, nodes, **opts), seconds)

    def output(self, job_id: str, node: str, channel: str = "stdout") -> httpx.Response:
        return self.admin.get(
            f"/organizations/{self.org}/pushy/jobs/{job_id}/output/{node}/{channel}",
            headers={"Accept": "application/octet-stream"},
        )

    def close(self) -> None:
        for client in self.clients.values():
            client.kill()


def process_group_alive(pgid: int) -> bool:
    """Whether a process (not a zombie) of group ``pgid`` still runs (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()  # state, ppid, pgrp, ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def kill_process_group(pgid: int) -> None:
    """Clean-up of a job a test left behind (e.g. after kill -9 of its client)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def make_agent(
    tmp_path: Path,
    key: Any,
    *,
    org: str = "org",
    node: str = "n1",
    hostname: str = "h1",
    **config: Any,
) -> Any:
    """A node client ``Agent`` for unit tests, its key written under ``tmp_path`` (it opens no
    socket; destroy ``agent.ctx`` when done)."""
    from dataclasses import replace

    from appliance.client.agent import Agent
    from appliance.client.config import ClientConfig
    from appliance.core.keys import private_pem

    key_path = tmp_path / f"{node}.pem"
    key_path.write_text(private_pem(key))
    settings = replace(
        ClientConfig(),
        chef_server_url=f"https://server/organizations/{org}",
        node_name=node,
        client_key=str(key_path),
        **config,
    )
    return Agent(settings, hostname=hostname)


def run_on_pty(command: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run ``command`` with its stdout on a pseudo-terminal (COLUMNS=100); what it wrote there,
    with the tty's CRLF turned back into LF. Its exit status must be 0."""
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            command, stdout=slave, stderr=subprocess.PIPE, cwd=cwd, env={**env, "COLUMNS": "100"}
        )
        os.close(slave)
        slave = -1
        output = read_pty(master, proc)
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    return output.decode().replace("\r\n", "\n")  # the tty's output processing adds \r to \n


def read_pty(master: int, proc: subprocess.Popen, seconds: float = 60) -> bytes:
    """Everything the child writes to the pseudo-terminal, until it exits and the pty drains."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child side is closed
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    return b"".join(chunks)
