"""systemd integration: what the real server and client processes tell ``$NOTIFY_SOCKET``
(STATUS lines, READY=1 once bound, WATCHDOG=1, RELOADING=1 ... READY=1 around a SIGHUP
reload, STOPPING=1), what a reload changes (live settings yes, restart-only settings no, a
broken file nothing) without dropping nodes, and the unit files themselves
(``systemd-analyze verify`` clean, ``systemd-analyze security`` "OK" or better).

The notify socket is a datagram socket bound in a temporary directory (not a network bind);
a thread drains it, as systemd would, and notes whether the server's ready file existed when
each datagram came.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from appliance.core import wire
from appliance.core.keys import generate_rsa, private_pem
from appliance.core.replayfold import PROGRESS_EVERY
from appliance.core.settings import LIVE_KEYS, Settings, load_settings, reload_settings
from appliance.server import main as server_main
from appliance.server.store import Store
from tests.e2e.helpers import Fleet, Node, post_job, run_to_success, wait_available, wait_job
from tests.support import REPO, ClientProcess, Server, setup_org, wait_for

UNITS = REPO / "systemd"
SERVER_UNIT = UNITS / "pushy-server.service"
CLIENT_UNIT = UNITS / "pushy-client.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


class NotifySocket:
    """A stand-in for systemd's notification socket, drained by a thread."""

    def __init__(self, directory: Path, marker: Path | None = None) -> None:
        self.path = directory / "notify.sock"
        self.marker = marker
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.1)
        self._messages: list[tuple[list[str], bool]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            marked = self.marker is not None and self.marker.exists()
            with self._lock:
                self._messages.append((data.decode().split("\n"), marked))

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path)}

    def messages(self) -> list[list[str]]:
        with self._lock:
            return [fields for fields, _ in self._messages]

    def marked(self, index: int) -> bool:
        """Whether the marker file existed when message ``index`` arrived."""
        with self._lock:
            return self._messages[index][1]

    def wait(
        self,
        wanted: str,
        *,
        after: int = 0,
        seconds: float = 15,
        nodes: tuple[Node, ...] = (),
    ) -> int:
        """The index of the first message from ``after`` on with the field ``wanted`` (exact,
        or a prefix when it ends with ``=``)."""

        def has(fields: list[str]) -> bool:
            return any(
                f == wanted or (wanted.endswith("=") and f.startswith(wanted)) for f in fields
            )

        def find() -> int | None:
            for i, fields in enumerate(self.messages()[after:], after):
                if has(fields):
                    return i + 1  # +1: wait_for wants a truthy value
            return None

        return wait_for(find, seconds, nodes, what=f"{wanted} on NOTIFY_SOCKET") - 1

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self.sock.close()


def field(fields: list[str], key: str) -> str | None:
    for f in fields:
        if f.startswith(key + "="):
            return f.split("=", 1)[1]
    return None


def write_config(server: Server, extra: str = "") -> None:
    """Rewrite the server's --config file from ``server.settings`` (plus raw ``extra``)."""
    server.config_path.write_text(
        "".join(f"{k} = {json.dumps(v)}\n" for k, v in server.settings.items()) + extra
    )


class LogTail:
    """The server log from a point on (the whole file, not the last 20 kB)."""

    def __init__(self, server: Server) -> None:
        self.path = server.log_path
        self.start = self.path.stat().st_size

    def text(self) -> str:
        with open(self.path, "rb") as f:
            f.seek(self.start)
            return f.read().decode(errors="replace")

    def wait(self, needle: str, nodes: tuple[Node, ...] = ()) -> str:
        return wait_for(lambda: needle in self.text() and self.text(), 10, nodes, what=needle)


def hup(server: Server) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGHUP)


# ---------------------------------------------------------------------------------------------
# The server under systemd's eye: one process for the module (STOPPING has its own)


@pytest.fixture(scope="module")
def notify(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path_factory.mktemp("sd"))
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, notify: NotifySocket) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("sdsrv") / "state",
        env={**notify.env, "WATCHDOG_USEC": "400000"},
        voting_timeout=60,
        max_time_skew=300,
    )
    notify.marker = srv.ready_path
    with srv:
        yield srv


def test_server_reports_progress_then_ready_once_bound(server: Server, notify: NotifySocket):
    first_ready = notify.wait("READY=1")
    before = notify.messages()[:first_ready]
    statuses = [field(m, "STATUS") for m in before if field(m, "STATUS")]
    assert any(s.startswith("replaying the event log") for s in statuses), statuses
    assert any("binding sockets" in s for s in statuses), statuses
    # READY only after the ready file was written, i.e. after every socket was bound
    assert notify.marked(first_ready), server.log()
    status = field(notify.messages()[first_ready], "STATUS")
    assert status == (
        f"serving 0 orgs, 0 nodes known, api :{server.ports['api_port']}, "
        f"commands :{server.ports['command_port']}"
    )


def test_server_watchdog_pings(server: Server, notify: NotifySocket):
    start = len(notify.messages())
    first = notify.wait("WATCHDOG=1", after=start)
    notify.wait("WATCHDOG=1", after=first + 1)


def test_reload_applies_live_settings_and_keeps_nodes(server: Server, notify: NotifySocket, fleet):
    org, admin, (node,) = fleet.setup("live1", prefix="reload")
    assert node.fetch_config().json()["max_message_skew"] == 300
    log = LogTail(server)
    mark = len(notify.messages())
    server.settings.update(voting_timeout=1, max_time_skew=123)
    write_config(server)
    hup(server)

    reloading = notify.wait("RELOADING=1", after=mark, nodes=(node,))
    assert int(field(notify.messages()[reloading], "MONOTONIC_USEC") or 0) > 0
    notify.wait("READY=1", after=reloading + 1, nodes=(node,))
    text = log.wait("reload: applied", nodes=(node,))
    assert "max_time_skew = 123.0" in text and "voting_timeout = 1.0" in text, text
    assert "needs a restart" not in text, text

    # the node was not dropped: still available, and no fresh opening abort came
    wait_available(admin, org, node)
    assert node.take("abort") == []

    # new values: what the sockets (in the edges) accept: a message 200 s old is dropped now
    def stale_dropped() -> int:
        status = httpx.get(f"{server.url}/pushy/_status?counters=true", timeout=10).json()
        return status["counters"]["dropped"].get("bad_timestamp", 0)

    dropped = stale_dropped()
    node.send("heartbeat", timestamp=wire.http_date(time.time() - 200))
    wait_for(lambda: stale_dropped() == dropped + 1, 10, (node,), what="the stale message dropped")
    # the config a node fetches, and a job's voting timeout (60 s before)
    assert node.fetch_config().json()["max_message_skew"] == 123
    job_id = post_job(admin, org, ["live1"])
    node.expect("commit")  # over the connection opened before the reload; not answered
    job = wait_job(admin, org, job_id, "quorum_failed", (node,), seconds=15)
    assert job["nodes"] == {"unavailable": ["live1"]}, job
    node.answer_abort()
    wait_available(admin, org, node)


def test_reload_keeps_settings_that_need_a_restart(server: Server, notify: NotifySocket, fleet):
    org, admin, (node,) = fleet.setup("live2", prefix="reload")
    assert node.config["push_jobs"]["heartbeat"]["interval"] == 0.2
    log = LogTail(server)
    mark = len(notify.messages())
    server.settings.update(heartbeat_interval=500, config_lifetime=77)
    try:
        write_config(server)
        hup(server)
        notify.wait("READY=1", after=notify.wait("RELOADING=1", after=mark, nodes=(node,)))
        text = log.wait("needs a restart", nodes=(node,))
        assert "heartbeat_interval changed in the config but needs a restart" in text, text
        assert "config_lifetime = 77.0" in text, text
        config = node.fetch_config().json()
        assert config["push_jobs"]["heartbeat"]["interval"] == 0.2  # the running value
        assert config["lifetime"] == 77
        wait_available(admin, org, node)
    finally:
        server.settings["heartbeat_interval"] = 200
        write_config(server)


def test_reload_with_a_broken_config_keeps_running_settings(
    server: Server, notify: NotifySocket, fleet
):
    org, admin, (node,) = fleet.setup("live3", prefix="reload")
    server.settings["max_time_skew"] = 222
    write_config(server)
    mark = len(notify.messages())
    hup(server)
    notify.wait("READY=1", after=notify.wait("RELOADING=1", after=mark, nodes=(node,)))
    wait_for(lambda: node.fetch_config().json()["max_message_skew"] == 222, nodes=(node,))

    broken: list[tuple[str, Callable[[], Any]]] = [
        ("is not TOML", lambda: write_config(server, "max_time_skew = 456\nvoting_timeout = [\n")),
        (
            "setting 'voting_timeout' must be a number > 0 (got -1)",
            lambda: write_config(server, "max_time_skew = 456\nvoting_timeout = -1\n"),
        ),
        ("cannot read the config", lambda: server.config_path.unlink()),
    ]
    try:
        for expected, damage in broken:
            log = LogTail(server)
            mark = len(notify.messages())
            server.settings.pop("voting_timeout", None)
            server.settings.pop("max_time_skew", None)
            damage()
            hup(server)
            ready = notify.wait("READY=1", after=notify.wait("RELOADING=1", after=mark))
            assert "the last reload failed" in (field(notify.messages()[ready], "STATUS") or "")
            text = log.wait("reload failed, keeping the running settings", nodes=(node,))
            if expected != "is not TOML":
                assert expected in text, text
            assert server.proc is not None and server.proc.poll() is None
            assert node.fetch_config().json()["max_message_skew"] == 222, expected
            wait_available(admin, org, node)
    finally:
        server.settings.update(voting_timeout=1, max_time_skew=222)
        write_config(server)


def test_stopping_on_sigterm(tmp_path: Path):
    notify = NotifySocket(tmp_path)
    srv = Server(tmp_path / "state", env=notify.env)
    notify.marker = srv.ready_path
    try:
        with srv:
            ready = notify.wait("READY=1")
            assert not any("WATCHDOG=1" in m for m in notify.messages())  # no WATCHDOG_USEC
            assert srv.stop() == 0
        stopping = notify.wait("STOPPING=1", after=ready + 1)
        assert field(notify.messages()[stopping], "STATUS") == "shutting down (SIGTERM)"
    finally:
        notify.close()


def test_reload_settings_takes_live_keys_and_names_the_others():
    running, _ = load_settings({"voting_timeout": 60, "api_port": 10003})
    loaded, _ = load_settings(
        {"voting_timeout": 5, "api_port": 10005, "log_level": "debug", "state_dir": "/srv/p"}
    )
    settings, changed, restart = reload_settings(running, loaded)
    assert changed == ["log_level", "voting_timeout"]
    assert restart == ["api_port", "state_dir"]
    assert (settings.voting_timeout, settings.log_level) == (5.0, "debug")
    assert (settings.api_port, settings.state_dir) == (10003, "/var/lib/pushy")
    assert reload_settings(running, running) == (running, [], [])
    assert LIVE_KEYS < set(Settings.__dataclass_fields__)


# ---------------------------------------------------------------------------------------------
# Replay progress (in-process: a long replay is too slow for a test, so its hook is driven)


def test_replay_reports_progress_and_extends_the_start_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    store = Store(tmp_path, segment_max_bytes=1 << 24, retention_days=0)
    store.load()
    record = {"type": "server_init", "incarnation": "i", "curve_public": "p", "curve_secret": "s"}
    store.initialise([{**record, "rsa_public_pem": "", "t": 0.0} for _ in range(2500)])
    store.log.close()
    notify = NotifySocket(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    monkeypatch.setattr(server_main, "REPLAY_NOTIFY_SECONDS", 0.0)
    try:
        calls: list[int] = []
        hook = server_main._replay_progress()
        Store(tmp_path, segment_max_bytes=1 << 24, retention_days=0).load(
            progress=lambda n: (calls.append(n), hook(n))
        )
        assert calls == [PROGRESS_EVERY, 2 * PROGRESS_EVERY]
        wait_for(lambda: len(notify.messages()) == 4)
        assert notify.messages() == [
            ["STATUS=replaying the event log: 1000 records"],
            ["EXTEND_TIMEOUT_USEC=30000000"],
            ["STATUS=replaying the event log: 2000 records"],
            ["EXTEND_TIMEOUT_USEC=30000000"],
        ]
    finally:
        notify.close()


# ---------------------------------------------------------------------------------------------
# The client


def test_client_is_ready_without_a_server(tmp_path: Path):
    notify = NotifySocket(tmp_path)
    nowhere = SimpleNamespace(url="http://127.0.0.1:1")
    client = ClientProcess(nowhere, "org", "lonely", private_pem(generate_rsa()), tmp_path / "c")
    client.start(env=notify.env)
    try:
        ready = notify.wait("READY=1")
        assert field(notify.messages()[ready], "STATUS") == "connecting to 127.0.0.1:1 as lonely"
        retry = notify.wait("STATUS=", after=ready + 1)
        status = field(notify.messages()[retry], "STATUS") or ""
        assert status.startswith("server unreachable, retrying in 1 s"), status
        assert client.proc is not None and client.proc.poll() is None, client.log()

        mark = len(notify.messages())
        client.proc.send_signal(signal.SIGHUP)  # systemctl reload: the config is re-read
        notify.wait("READY=1", after=notify.wait("RELOADING=1", after=mark))
        assert client.stop() == 0, client.log()
        stopping = notify.wait("STOPPING=1", after=mark)
        assert stopping > ready
    finally:
        client.kill()
        notify.close()


def test_client_reports_its_connection_and_pings_the_watchdog(server: Server, tmp_path: Path):
    notify = NotifySocket(tmp_path)
    admin, keys = setup_org(server, "sdclient", ("c1",))
    client = ClientProcess(server, "sdclient", "c1", keys["c1"], tmp_path / "c")
    client.start(env={**notify.env, "WATCHDOG_USEC": "400000"})
    try:
        host = server.url.removeprefix("http://")
        ready = notify.wait("READY=1")
        connected = notify.wait(f"STATUS=connected to {host} as c1", after=ready + 1, seconds=30)
        assert connected > ready
        notify.wait("WATCHDOG=1")
        path = "/organizations/sdclient/pushy/node_states/c1"
        wait_for(lambda: admin.get(path).json().get("availability") == "available", 20)
        assert client.stop() == 0, client.log()
        notify.wait("STOPPING=1", after=connected)
    finally:
        client.kill()
        notify.close()


# ---------------------------------------------------------------------------------------------
# The unit files


def unit_lines(path: Path) -> list[tuple[str, str]]:
    """(key, value) of every assignment, in order (keys may repeat, as systemd allows)."""
    pairs = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            pairs.append((key, value))
    return pairs


def test_server_unit_follows_the_packaging_conventions():
    units = dict(unit_lines(SERVER_UNIT))
    assert units["Type"] == "notify"
    assert units["ExecStart"] == "/usr/bin/pushy server --config /etc/pushy/pushy-server.toml"
    assert units["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert (units["User"], units["Group"]) == ("pushy", "pushy")
    assert (units["StateDirectory"], units["StateDirectoryMode"]) == ("pushy", "0700")
    assert units["LogsDirectory"] == units["ConfigurationDirectory"] == "pushy"
    assert int(units["LimitNOFILE"]) >= 65536
    assert units["WatchdogSec"] and units["CapabilityBoundingSet"] == ""


def test_client_unit_runs_as_root_and_does_not_confine_jobs():
    units = dict(unit_lines(CLIENT_UNIT))
    assert units["Type"] == "notify" and units["Restart"] == "always"
    assert units["ExecStart"] == "/usr/bin/pushy-client"
    assert "network-online.target" in units["After"] and "network-online.target" in units["Wants"]
    assert "User" not in units  # root: jobs run as the user they name
    # restrictions a job would inherit and that break ordinary admin commands (sudo, apt, ...)
    for key in ("NoNewPrivileges", "ProtectSystem", "SystemCallFilter", "MemoryDenyWriteExecute"):
        assert key not in units, key


@needs_analyze
def test_units_verify_clean(tmp_path: Path):
    """``systemd-analyze verify`` in a throwaway root holding the host's units (for the targets
    ours reference), our units where the packages install them, and a stub at every program
    they run (the packages install the real ones)."""
    root = tmp_path / "root"
    units = root / "usr/lib/systemd/system"
    for system_units in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if system_units.is_dir():
            shutil.copytree(system_units, units, symlinks=True)
            break
    else:
        pytest.skip("no system unit directory on this machine")
    programs = set()
    for unit in (SERVER_UNIT, CLIENT_UNIT):
        shutil.copy(unit, units / unit.name)
        programs |= {v.split()[0] for k, v in unit_lines(unit) if k.startswith("Exec")}
    assert programs == {"/usr/bin/pushy", "/usr/bin/pushy-client", "/bin/kill"}
    for program in programs:
        stub = root / program.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    r = subprocess.run(
        [ANALYZE, "verify", f"--root={root}", "--man=no", SERVER_UNIT.name, CLIENT_UNIT.name],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), (r.stdout, r.stderr)


def syscall_group(name: str) -> set[str]:
    """The syscalls of a systemd ``@group``, nested groups expanded."""
    assert ANALYZE is not None
    out = subprocess.run(
        [ANALYZE, "syscall-filter", name], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        word = line.strip()
        if word.startswith("@"):
            calls |= syscall_group(word)
        elif word and not word.startswith("#"):
            calls.add(word)
    return calls


def strace_works(tmp_path: Path) -> bool:
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(["strace", "-f", "-o", str(tmp_path / "probe"), "true"], timeout=60)
    return probe.returncode == 0


@needs_analyze
def test_server_syscalls_fit_the_units_seccomp_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zctx
):
    """The server's whole life (first start, keys, signed requests, CURVE, a job, a reload,
    shutdown) traced with strace: every syscall is allowed by the unit's SystemCallFilter,
    and nothing maps memory writable and executable (MemoryDenyWriteExecute). systemd is not
    PID 1 here, so this is how the sandbox is checked against the real program."""
    if not strace_works(tmp_path):
        pytest.skip("strace is not installed or cannot trace here")
    trace = tmp_path / "trace"
    wrapper = tmp_path / "python-under-strace"
    wrapper.write_text(f'#!/bin/sh\nexec strace -f -qq -o {trace} {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(wrapper))
    srv = Server(tmp_path / "state")
    with srv:
        monkeypatch.undo()
        real_pid = srv.ports["pid"]  # srv.proc is strace, which would leave it running
        try:
            org, admin, (node,) = Fleet(srv, zctx).setup("traced")
            job_id = post_job(admin, org, ["traced"])
            run_to_success(node, job_id)
            wait_job(admin, org, job_id, "complete", (node,))
            log = LogTail(srv)
            os.kill(real_pid, signal.SIGHUP)
            log.wait("reload: no live setting changed", nodes=(node,))
            node.close()
            os.kill(real_pid, signal.SIGTERM)
            assert srv.proc is not None and srv.proc.wait(30) == 0, srv.log()
        finally:
            if srv.proc is not None and srv.proc.poll() is None:
                os.kill(real_pid, signal.SIGKILL)
    allowed, denied = set(), set()
    for key, value in unit_lines(SERVER_UNIT):
        if key == "SystemCallFilter":
            negate = value.startswith("~")
            names = value.removeprefix("~").split()
            calls = set().union(*(syscall_group(n) if n[0] == "@" else {n} for n in names))
            (denied if negate else allowed).update(calls)
    text = trace.read_text()
    used = set(re.findall(r"^\d+ +(\w+)\(", text, re.M))
    assert len(used) > 30, text[:2000]
    assert used - (allowed - denied) == set()
    wx = re.findall(
        r"^.*(?:mmap|mprotect)\(.*PROT_(?:WRITE\|PROT_EXEC|EXEC\|PROT_WRITE).*$", text, re.M
    )
    assert wx == []
    assert re.findall(r"^.*mprotect\(.*PROT_EXEC.*$", text, re.M) == []


@needs_analyze
def test_server_unit_security_rating_is_ok_or_better():
    r = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(SERVER_UNIT)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r"Overall exposure level for pushy-server\.service: ([\d.]+) (\w+)", r.stdout)
    assert match, (r.returncode, r.stdout, r.stderr)
    exposure, rating = float(match[1]), match[2]
    # systemd's bands: PERFECT 0, SAFE <= 1.0, OK <= 4.9, then MEDIUM, EXPOSED, UNSAFE
    assert exposure <= 4.9 and rating in ("PERFECT", "SAFE", "OK"), r.stdout
