"""An active/standby set for the tests: a real PostgreSQL, `pushy server`s on their own
loopback addresses (127.0.0.2, 127.0.0.3, ...), and a real HAProxy in front of their API ports
that sends requests to whichever answers 200 on ``/pushy/_status`` (the set-up docs/operations.md
describes). Nodes and the CLI reach the service through HAProxy only.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.pgcluster import PgCluster, free_port
from tests.support import REPO, Server

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


class HaServer(Server):
    """One server of the set on ``host``: fixed ports (HAProxy's configuration names them)."""

    def __init__(self, state_dir: Path, host: str, url: str, **settings: Any) -> None:
        self.host = host
        self.api_port = free_port(host)
        super().__init__(
            state_dir,
            api_listen_address=host,
            api_port=self.api_port,
            zeromq_listen_address=f"tcp://{host}",
            server_name=host,
            store=url,
            edge_processes=0,
            **settings,
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    def start(self, *extra: str, role: str | None = "any") -> HaServer:
        """Start; wait until it answers its status (``role``: until it is that one)."""
        self.ready_path.unlink(missing_ok=True)
        self.config_path.write_text(
            "".join(f"{k} = {_toml(v)}\n" for k, v in self.settings.items())
        )
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *_command(),
                    "--config",
                    str(self.config_path),
                    "--ready-file",
                    str(self.ready_path),
                    *extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
            )
        if role is not None:
            self.wait_role(role, self.startup_seconds)
        return self

    def role(self) -> str | None:
        """``active``, ``standby``, or None when it does not answer."""
        try:
            r = httpx.get(f"{self.url}/pushy/_status", timeout=2)
            return r.json().get("role")
        except (httpx.HTTPError, ValueError):
            return None

    def wait_role(self, role: str, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            now = self.role()
            if now is not None and (role == "any" or now == role):
                if now == "active":
                    self.wait_ready_file(seconds)
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.host} not {role} in {seconds} s:\n{self.log()}")

    def wait_ready_file(self, seconds: float) -> None:
        import json

        deadline = time.monotonic() + seconds
        while not self.ready_path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no ready file from {self.host}")
            time.sleep(0.02)
        self.ports = json.loads(self.ready_path.read_text())

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


def _toml(value: Any) -> str:
    import json

    return json.dumps(value)


def _command() -> list[str]:
    from appliance.localserver import pushy_command

    return [*pushy_command(), "server"]


class HaProxy:
    """HAProxy on 127.0.0.1 in front of ``servers``' API ports, checking /pushy/_status."""

    def __init__(self, root: Path, servers: list[HaServer], port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port("127.0.0.1")
        self.config = root / "haproxy.cfg"
        self.servers = servers
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HaProxy:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(haproxy_config(self.port, self.servers))
        check = subprocess.run([HAPROXY, "-c", "-f", str(self.config)], capture_output=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c: {check.stderr.decode()}{check.stdout.decode()}")
        self.log_path = self.root / "haproxy.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def wait_backend(self, seconds: float = 30, in_a_row: int = 6) -> None:
        """Until requests through HAProxy reach an active server only (``in_a_row`` of them:
        HAProxy counts a server up until its checks fail, a standby too)."""
        deadline = time.monotonic() + seconds
        good = 0
        while time.monotonic() < deadline:
            try:
                ok = httpx.get(f"{self.url}/pushy/_status", timeout=2).status_code == 200
            except httpx.HTTPError:
                ok = False
            good = good + 1 if ok else 0
            if good >= in_a_row:
                return
            time.sleep(0.05 if ok else 0.1)
        raise RuntimeError("HAProxy found no active server")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def haproxy_config(port: int, servers: list[HaServer]) -> str:
    """The configuration docs/operations.md shows, with the test's addresses and a quicker
    check (inter 500 ms, fall 2, rise 1)."""
    lines = [
        "global",
        "    maxconn 4096",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 1h",
        "    timeout server 1h",
        "    timeout tunnel 1h",
        "    option redispatch",
        "    retries 2",
        "frontend pushy_api",
        f"    bind 127.0.0.1:{port}",
        "    default_backend pushy_servers",
        "backend pushy_servers",
        "    option httpchk GET /pushy/_status",
        "    http-check expect status 200",
        "    default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions",
    ]
    for i, server in enumerate(servers):
        lines.append(f"    server pushy{i} {server.host}:{server.api_port} check")
    return "\n".join(lines) + "\n"


_databases = itertools.count(1)


class HaSet:
    """The whole rig: PostgreSQL, ``count`` servers, HAProxy; `close` stops all of it."""

    def __init__(
        self, root: Path, count: int = 2, cluster: PgCluster | None = None, **settings: Any
    ) -> None:
        self.root = root
        self.own_cluster = cluster is None
        self.cluster = cluster or PgCluster().start()
        self.url = self.cluster.createdb(f"pushy_ha_{next(_databases)}")
        self.servers = [
            HaServer(root / f"s{i}" / "state", f"127.0.0.{i + 2}", self.url, **settings)
            for i in range(count)
        ]
        for server in self.servers:
            server.state_dir.parent.mkdir(parents=True, exist_ok=True)
        self.proxy = HaProxy(root / "haproxy", self.servers)

    def start(self) -> HaSet:
        first = self.servers[0].start(role="active")
        for server in self.servers[1:]:
            server.start(role="standby")
            # the superuser's key is made by the first active; an operator copies it too
            shutil.copy(first.pivotal_key, server.state_dir / "pivotal.pem")
        self.proxy.start()
        self.proxy.wait_backend()
        return self

    def active(self, seconds: float = 60) -> HaServer:
        """The server that is active now (waiting for one)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for server in self.servers:
                if server.proc is not None and server.proc.poll() is None:
                    if server.role() == "active":
                        return server
            time.sleep(0.05)
        raise RuntimeError("no active server")

    def close(self) -> None:
        self.proxy.stop()
        for server in self.servers:
            server.kill()
        if self.own_cluster:
            self.cluster.destroy()
