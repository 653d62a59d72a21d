"""An active/standby set for the tests: a real PostgreSQL, `pushy server`s on their own
loopback addresses (127.0.0.2, 127.0.0.3, ...), and a real HAProxy in front of their API ports
that sends requests to whichever answers 200 on ``/pushy/_status`` (the set-up docs/operations.md
describes). Nodes and the CLI reach the service through HAProxy only.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from appliance.bench.haproxy import HaProxy, ha_settings
from appliance.bench.haproxy import role as role_of
from appliance.bench.pgcluster import PgCluster, free_port
from tests.support import Server


class HaServer(Server):
    """One server of the set on ``host``: fixed ports (HAProxy's configuration names them)."""

    def __init__(self, state_dir: Path, host: str, url: str, **settings: Any) -> None:
        self.host = host
        self.api_port = free_port(host)
        super().__init__(
            state_dir, **ha_settings(host, self.api_port, url), edge_processes=0, **settings
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    def start(self, *extra: str, role: str | None = "any") -> HaServer:
        """Start; wait until it answers its status (``role``: until it is that one)."""
        self.launch(*extra)
        if role is not None:
            self.wait_role(role, self.startup_seconds)
        return self

    def role(self) -> str | None:
        """``active``, ``standby``, or None when it does not answer."""
        return role_of(self.url)

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
        self.proxy = HaProxy(root / "haproxy", [(s.host, s.api_port) for s in self.servers])

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


class Forwarder:
    """A TCP forwarder from 127.0.0.1:``port`` to ``target``: a server reaching the database
    through it loses the database when it is cut (``cut``), while others still reach it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port("127.0.0.1")
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> Forwarder:
        listener = socket.create_server(("127.0.0.1", self.port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def cut(self) -> None:
        """Close the listener and every connection through it."""
        if self._listener is not None:
            try:  # wakes the accept blocked in its thread (a close alone leaves it listening)
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._open.clear()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass
