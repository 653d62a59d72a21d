"""A real HAProxy in front of a PostgreSQL store's servers, for the tests and ``pushy bench``.

It sends API requests to whichever server answers 200 on ``/pushy/_status`` (the active; a
standby answers 503), with the configuration docs/operations.md gives operators, on loopback
addresses and with quicker checks. Debian's ``haproxy`` (``scripts/test`` installs it).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx

from appliance.bench.pgcluster import free_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def haproxy_config(port: int, backends: list[tuple[str, int]]) -> str:
    """The configuration docs/operations.md shows, on 127.0.0.1:``port``, with a quicker check
    (every 500 ms, down after 2 failures, up after 1 success)."""
    lines = [
        "global",
        "    maxconn 8000",  # each takes 2 descriptors: under the 20,000 a process may have
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
    for i, (host, api_port) in enumerate(backends):
        lines.append(f"    server pushy{i} {host}:{api_port} check")
    return "\n".join(lines) + "\n"


class HaProxy:
    """HAProxy on 127.0.0.1 in front of ``backends`` (host, API port)."""

    def __init__(self, root: Path, backends: list[tuple[str, int]], port: int | None = None):
        self.root = root
        self.port = port or free_port("127.0.0.1")
        self.config = root / "haproxy.cfg"
        self.log_path = root / "haproxy.log"
        self.backends = backends
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HaProxy:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(haproxy_config(self.port, self.backends))
        check = subprocess.run([HAPROXY, "-c", "-f", str(self.config)], capture_output=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c: {check.stderr.decode()}{check.stdout.decode()}")
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


def role(api_url: str) -> str | None:
    """A server's role (``active``, ``standby``), or None when it does not answer."""
    try:
        return httpx.get(f"{api_url}/pushy/_status", timeout=2).json().get("role")
    except (httpx.HTTPError, ValueError):
        return None


def ha_settings(host: str, api_port: int, url: str) -> dict[str, object]:
    """One server of the set on its own loopback address, sharing the database ``url``."""
    return {
        "api_listen_address": host,
        "api_port": api_port,
        "zeromq_listen_address": f"tcp://{host}",
        "server_name": host,
        "store": url,
    }
