"""``pushy client`` as a process end to end (client-knife.md §D 1-9, 18-19): config fetch,
heartbeats both ways, signals, restarts of either side mid-job, a new server incarnation,
the legacy (unencrypted) mode and the exit statuses.

Every client is a real process started from a config file in the push-jobs cookbook's format
against the real server on 127.0.0.1. One case is not reachable with the real server: a
session key the client cannot decrypt (the server always encrypts it to the very key that
signed the request), so a small local HTTP stand-in serves that one config.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import zmq
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from appliance.core.keys import decrypt_session_key, encrypt_session_key, load_private_pem
from tests.support import (
    REPO,
    Chef,
    ClientFleet,
    ClientProcess,
    Server,
    kill_process_group,
    process_group_alive,
    wait_for,
)

PORT_KEYS = ("api_port", "command_port", "server_heartbeat_port")


def whitelist(work: Path) -> str:
    """``hello``, and ``waitgo NAME``: writes its pid to NAME.pid, then waits (up to 60 s)
    for NAME.go to appear and succeeds, so a test decides when a running job ends."""
    wait = (
        f"echo $$ > {work}/\\1.pid; i=0; "
        f"while [ ! -e {work}/\\1.go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; "
        f"[ -e {work}/\\1.go ]"
    )
    return f"{{'hello'=>'echo hello from $CHEF_PUSH_NODE_NAME', /^waitgo (\\w+)$/=>'{wait}'}}"


def log_count(client: ClientProcess, text: str) -> int:
    return client.log().count(text)


def restart_server(server: Server, *, kill: bool = False) -> None:
    """Stop (SIGTERM or kill -9) and start again on the same state dir and ports."""
    ports = {k: server.ports[k] for k in PORT_KEYS}
    if kill:
        server.kill()
    else:
        assert server.stop() == 0, server.log()
    server.settings.update(ports)
    server.start()
    assert {k: server.ports[k] for k in PORT_KEYS} == ports


def start_running(fleet: ClientFleet, work: Path, node: str, name: str) -> tuple[str, int]:
    """Post ``waitgo NAME`` to ``node`` and wait until it runs; (job id, its process group)."""
    job_id = fleet.post(f"waitgo {name}", [node])
    fleet.wait_nodes(job_id, {"running": [node]})
    pidfile = work / f"{name}.pid"
    pgid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10))
    assert process_group_alive(pgid)
    return job_id, pgid


def pushy_client_program(tmp_path: Path) -> list[str]:
    """The ``pushy-client`` console script (the program tells its role by its name). When
    this virtualenv was installed before the entry point existed, the same script pip would
    write is put in ``tmp_path``."""
    installed = Path(sys.executable).parent / "pushy-client"
    if installed.exists():
        return [str(installed)]
    script = tmp_path / "bin" / "pushy-client"
    script.parent.mkdir(exist_ok=True)
    script.write_text(
        f"#!{sys.executable}\nimport sys\nfrom appliance.cli import main\n"
        "if __name__ == '__main__':\n    sys.exit(main())\n"
    )
    script.chmod(0o755)
    return [str(script)]


@pytest.fixture
def servers(tmp_path):
    """Servers a test starts (``servers.append``) are killed at its end."""
    started: list[Server] = []
    yield started
    for server in started:
        server.kill()


@pytest.fixture
def fleets():
    made: list[ClientFleet] = []
    yield made
    for fleet in made:
        fleet.close()


# ---------------------------------------------------------------------------------------------
# Config fetch and heartbeats


def test_config_fetch_and_heartbeats_both_ways(tmp_path, servers, fleets):
    server = Server(tmp_path / "state").start()
    servers.append(server)
    fleet = ClientFleet(server, "hb", tmp_path / "clients")
    fleets.append(fleet)
    client = fleet.add("hb1", whitelist=whitelist(tmp_path))
    fleet.wait_available("hb1")
    log = client.log()
    prefix = f"Retrieving configuration from {server.url}/organizations/hb/pushy/config/hb1?ccpk="
    line = next(line for line in log.splitlines() if prefix in line)
    assert line.endswith("&version=2.0")
    assert "Sending heartbeat 1 (logging first 3)" in log  # heartbeats to the server ...
    wait_for(lambda: "Received server heartbeat (sequence #" in client.log(), 10)  # ... and back
    assert fleet.state("hb1") == ("online", "available")

    # The server goes away: the client counts the missing server heartbeats and stops sending.
    restart_ports = {k: server.ports[k] for k in PORT_KEYS}
    assert server.stop() == 0
    wait_for(lambda: "Considering it offline" in client.log(), 15, what="client notices")
    assert "Server has missed" in client.log()
    server.settings.update(restart_ports)
    server.start()
    fleet.wait_available("hb1")
    assert fleet.run("hello", ["hb1"])["nodes"] == {"succeeded": ["hb1"]}

    # The client goes away: the server misses its heartbeats and marks the node down.
    client.kill()
    wait_for(lambda: fleet.state("hb1")[0] == "offline", 15, what="node offline")


# ---------------------------------------------------------------------------------------------
# Restarts mid-job


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "kill-9"])
def test_server_restart_mid_job_the_job_completes(tmp_path, servers, fleets, kill):
    # 1 s heartbeats: the server is back before the client would call it offline, so the
    # client keeps its connection and the server resumes the node (and its job).
    server = Server(tmp_path / "state", heartbeat_interval=1000).start()
    servers.append(server)
    fleet = ClientFleet(server, "srv", tmp_path / "clients")
    fleets.append(fleet)
    fleet.add("s1", whitelist=whitelist(tmp_path))
    fleet.wait_available("s1")
    incarnation = server.status()["incarnation_id"]
    job_id, pgid = start_running(fleet, tmp_path, "s1", "during")
    if kill:  # a durable write first, so that kill -9 loses nothing the test relies on
        r = fleet.admin.post("/organizations/srv/groups", {"groupname": "barrier"})
        assert r.status_code == 201, r.text
    restart_server(server, kill=kill)
    assert server.status()["incarnation_id"] == incarnation
    assert fleet.job(job_id)["status"] == "running"
    (tmp_path / "during.go").touch()
    job = fleet.wait_job(job_id)
    assert (job["status"], job["nodes"]) == ("complete", {"succeeded": ["s1"]}), server.log()
    assert not process_group_alive(pgid)
    fleet.wait_available("s1")
    assert fleet.run("hello", ["s1"])["nodes"] == {"succeeded": ["s1"]}


def test_client_restart_mid_job_the_node_is_crashed(tmp_path, servers, fleets):
    server = Server(tmp_path / "state").start()
    servers.append(server)
    fleet = ClientFleet(server, "cli", tmp_path / "clients")
    fleets.append(fleet)
    client = fleet.add("c1", whitelist=whitelist(tmp_path))
    fleet.wait_available("c1")
    job_id, pgid = start_running(fleet, tmp_path, "c1", "orphan")
    try:
        client.kill()  # kill -9: the job's process (its own session) stays behind
        client.start()
        job = fleet.wait_job(job_id)
        assert (job["status"], job["nodes"]) == ("complete", {"crashed": ["c1"]})
        fleet.wait_available("c1")
        assert fleet.run("hello", ["c1"])["nodes"] == {"succeeded": ["c1"]}
        assert log_count(client, "Incarnation ID: ") == 2  # a new client incarnation
    finally:
        kill_process_group(pgid)


def test_client_started_before_the_server_comes_up_by_itself(tmp_path, servers, fleets):
    """Also: the program started as ``pushy-client`` behaves as ``pushy client``."""
    server = Server(tmp_path / "state").start()
    servers.append(server)
    fleet = ClientFleet(server, "early", tmp_path / "clients")
    fleets.append(fleet)
    client = fleet.add("e1", whitelist=whitelist(tmp_path), start=False)
    ports = {k: server.ports[k] for k in PORT_KEYS}
    assert server.stop() == 0
    client.start(program=pushy_client_program(tmp_path))
    wait_for(lambda: "Could not download push jobs config" in client.log(), 15)
    assert client.proc.poll() is None, client.log()  # retrying, with backoff
    server.settings.update(ports)
    server.start()
    fleet.wait_available("e1", seconds=30)
    assert fleet.run("hello", ["e1"])["nodes"] == {"succeeded": ["e1"]}
    assert client.stop() == 0


# ---------------------------------------------------------------------------------------------
# An address the node cannot reach

ENCRYPTION_LINE = "No messages being received on command port in 4s.  Possible encryption problem?"


def far_server(tmp_path: Path, server_name: str, **settings: Any) -> Server:
    """A server that advertises ``server_name`` and listens on 127.0.0.1 only: the config fetch
    works (it goes through chef_server_url), the ZeroMQ addresses it gives do not."""
    return Server(
        tmp_path / "state",
        server_name=server_name,
        zeromq_listen_address="tcp://127.0.0.1",
        **settings,
    ).start()


def first_line(lines: list[str], text: str) -> int:
    return next(i for i, line in enumerate(lines) if text in line)


@pytest.mark.parametrize(
    ("server_name", "why"),
    [
        ("nosuchhost.invalid", "the host 'nosuchhost.invalid' does not resolve here ("),
        # 127.0.0.2 is loopback too, but nothing listens on it: refused
        ("127.0.0.2", "could not connect to 127.0.0.2:{port} (Connection refused); "),
    ],
    ids=["does-not-resolve", "refused"],
)
def test_a_silent_command_channel_names_the_address_and_why(
    tmp_path, servers, fleets, server_name, why
):
    """Before the original's "Possible encryption problem?", the client says which address it
    was given and what is wrong with it. (2 s heartbeats: the watchdog fires before the
    client would find the server offline.)"""
    server = far_server(tmp_path, server_name, heartbeat_interval=2000)
    servers.append(server)
    fleet = ClientFleet(server, "far", tmp_path / "clients")
    fleets.append(fleet)
    client = fleet.add("f1")
    wait_for(lambda: ENCRYPTION_LINE in client.log(), 30, what="the watchdog's line")
    lines = client.log().splitlines()
    port = server.ports["command_port"]
    said = (
        f"ERROR: [f1] The server's config gave command address tcp://{server_name}:{port} "
        f"(command_port): {why.format(port=port)}"
    )
    assert any(said in line for line in lines), client.log()
    assert first_line(lines, said) < first_line(lines, ENCRYPTION_LINE)
    heartbeat = f"heartbeat address tcp://{server_name}:{server.ports['server_heartbeat_port']}"
    if server_name == "127.0.0.2":  # each port refuses: each is named
        next_line = lines[first_line(lines, said) + 1]
        assert heartbeat in next_line and "(Connection refused)" in next_line
    else:  # one unknown host: named once
        assert heartbeat not in client.log()
    assert client.proc.poll() is None  # and it keeps trying
    assert "f1" not in fleet.states()  # the server never heard from it


def test_the_address_is_named_when_server_heartbeats_stop_first(tmp_path, servers, fleets):
    """200 ms heartbeats: the client finds the server offline (no heartbeat on the unreachable
    port) before the watchdog fires, and reconfigures from there; it names the address first,
    once per connection."""
    server = far_server(tmp_path, "nosuchhost.invalid")
    servers.append(server)
    fleet = ClientFleet(server, "far", tmp_path / "clients")
    fleets.append(fleet)
    client = fleet.add("f2")
    fetch = "Retrieving configuration from"
    wait_for(lambda: log_count(client, fetch) >= 3, 30, what="two reconfigures")
    lines = client.log().splitlines()
    said = f"command address tcp://nosuchhost.invalid:{server.ports['command_port']}"
    offline = first_line(lines, "Considering it offline")
    assert offline < first_line(lines, said) < first_line(lines[offline:], fetch) + offline
    named = sum(said in line for line in lines)
    assert 1 <= named <= log_count(client, fetch), client.log()


# ---------------------------------------------------------------------------------------------
# A new server incarnation


def _public_pem(private_pem: str) -> str:
    key = load_private_pem(private_pem)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.mark.parametrize("same_server_key", [True, False], ids=["same-key", "new-key"])
def test_new_server_incarnation_makes_the_client_reconfigure(
    tmp_path, servers, fleets, same_server_key
):
    """A new server (new state dir: a new incarnation, a new CURVE key) that knows the same
    org and the same client key, recreated through the API with its public key.

    With the old server's RSA key (server.pem kept) the client can check the new server's
    heartbeats and sees the new incarnation in them. With a new RSA key it cannot (their
    signatures do not verify, as with the original), so it finds the server offline and
    reconfigures that way. Either way it fetches the config again and runs jobs."""
    # 1 s heartbeats: the swap below is over long before the client would call the server
    # offline, so with the same key what it notices is the new incarnation.
    old = Server(tmp_path / "old", heartbeat_interval=1000).start()
    servers.append(old)
    fleet = ClientFleet(old, "inc", tmp_path / "clients")
    fleets.append(fleet)
    client = fleet.add("i1", whitelist=whitelist(tmp_path))
    fleet.wait_available("i1")
    new = Server(tmp_path / "new", heartbeat_interval=1000)
    servers.append(new)
    if same_server_key:
        new.state_dir.mkdir(mode=0o700)
        shutil.copy2(old.state_dir / "server.pem", new.state_dir / "server.pem")
    new.start()
    admin = Chef(new.url, "pivotal", new.pivotal_key.read_bytes())
    assert admin.post("/organizations", {"name": "inc", "full_name": "inc"}).status_code == 201
    body = {"name": "i1", "public_key": _public_pem(client.key_path.read_text())}
    r = admin.post("/organizations/inc/clients", body)
    assert r.status_code == 201, r.text
    assert new.status()["incarnation_id"] != old.status()["incarnation_id"]
    assert new.stop() == 0
    ports = {k: old.ports[k] for k in PORT_KEYS}
    assert old.stop() == 0
    new.settings.update(ports)
    new.start()

    fleet.server, fleet.admin = new, Chef(new.url, "pivotal", new.pivotal_key.read_bytes())
    if same_server_key:
        wait_for(lambda: "Server restart detected" in client.log(), 15, what="restart detected")
    else:
        wait_for(lambda: "Considering it offline" in client.log(), 15, what="server offline")
    wait_for(lambda: log_count(client, "Retrieving configuration from") >= 2, 15)
    fleet.wait_available("i1")
    job = fleet.run("hello", ["i1"], capture_output=True)
    assert job["nodes"] == {"succeeded": ["i1"]}
    assert fleet.output(job["id"], "i1").content == b"hello from i1\n"


# ---------------------------------------------------------------------------------------------
# Signals


@pytest.fixture(scope="module")
def signal_server(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("signals") / "state") as server:
        yield server


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT], ids=["TERM", "INT", "QUIT"]
)
def test_stop_signals_kill_the_running_job_and_exit_0(signal_server, tmp_path, fleets, signum):
    name = signum.name.removeprefix("SIG")
    fleet = ClientFleet(signal_server, f"sig{name.lower()}", tmp_path / "clients")
    fleets.append(fleet)
    client = fleet.add("g1", whitelist=whitelist(tmp_path))
    fleet.wait_available("g1")
    job_id, pgid = start_running(fleet, tmp_path, "g1", "victim")
    try:
        client.proc.send_signal(signum)
        assert client.proc.wait(20) == 0, client.log()
        assert f"received {name}, shutting down" in client.log()
        assert not process_group_alive(pgid)
    finally:
        kill_process_group(pgid)
    wait_for(lambda: fleet.state("g1")[0] == "offline", 15, what="node offline")


def test_usr1_reconfigures(signal_server, tmp_path, fleets):
    fleet = ClientFleet(signal_server, "usr1", tmp_path / "clients")
    fleets.append(fleet)
    client = fleet.add("u1", whitelist=whitelist(tmp_path))
    fleet.wait_available("u1")
    assert log_count(client, "Retrieving configuration from") == 1
    client.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: log_count(client, "Retrieving configuration from") == 2, 15)
    assert "received USR1, reconfiguring" in client.log()
    # The node stays available throughout; a job goes to the new connection once the server
    # has heard from it (a commit sent to the old one would be lost, as with the original).
    wait_for(lambda: log_count(client, "Command channel up") == 2, 15)
    fleet.wait_available("u1")
    assert fleet.run("hello", ["u1"])["nodes"] == {"succeeded": ["u1"]}
    assert client.proc.poll() is None


def test_hup_rereads_the_config_file(signal_server, tmp_path, fleets):
    fleet = ClientFleet(signal_server, "hup", tmp_path / "clients")
    fleets.append(fleet)
    client = fleet.add("h1", whitelist="{'hello'=>'echo hello'}")
    fleet.wait_available("h1")
    job = fleet.run("later", ["h1"])
    assert (job["status"], job["nodes"]) == ("quorum_failed", {"nacked": ["h1"]})
    text = client.config_path.read_text()
    client.config_path.write_text(text.replace("'hello'=>", "'later'=>'echo later', 'hello'=>"))
    client.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "re-reading the configuration" in client.log(), 10)
    job = fleet.run("later", ["h1"], capture_output=True)
    assert job["nodes"] == {"succeeded": ["h1"]}, client.log()
    assert fleet.output(job["id"], "h1").content == b"later\n"
    assert log_count(client, "Retrieving configuration from") == 1  # the connection was kept
    # a broken file is refused; the previous configuration stays
    client.config_path.write_text(text + "whitelist({\n")
    client.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "keeping the previous configuration" in client.log(), 10)
    assert fleet.run("later", ["h1"])["nodes"] == {"succeeded": ["h1"]}
    assert client.proc.poll() is None


# ---------------------------------------------------------------------------------------------
# Legacy (1.x) servers: no CURVE key in the config


def test_legacy_server_needs_allow_unencrypted(tmp_path, servers, fleets):
    server = Server(tmp_path / "state", disable_curve_encryption=True).start()
    servers.append(server)
    fleet = ClientFleet(server, "legacy", tmp_path / "clients")
    fleets.append(fleet)
    wl = whitelist(tmp_path)
    refused = fleet.add("l0", whitelist=wl, start=False)
    r = subprocess.run(
        [sys.executable, "-m", "appliance", "client", "-c", str(refused.config_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Exiting: No key returned from server" in r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    fleet.add("l1", whitelist=wl, extra="allow_unencrypted true\n")
    fleet.add("l2", whitelist=wl, flags=("--allow_unencrypted",))
    fleet.wait_available("l1", "l2")
    job = fleet.run("hello", ["l1", "l2"], capture_output=True)
    assert job["nodes"] == {"succeeded": ["l1", "l2"]}
    assert fleet.output(job["id"], "l2").content == b"hello from l2\n"
    for name in ("l1", "l2"):
        assert "falling back to 1.x protocol" in fleet.clients[name].log()


# ---------------------------------------------------------------------------------------------
# Exit statuses


@pytest.mark.parametrize("program", ["python -m", "pushy-client"])
def test_version(tmp_path, program):
    command = (
        [sys.executable, "-m", "appliance", "client"]
        if program == "python -m"
        else pushy_client_program(tmp_path)
    )
    r = subprocess.run([*command, "-v"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("Push Client: "), (r.stdout, r.stderr)
    assert len(r.stdout.split()) == 3


@pytest.mark.parametrize("program", ["python -m", "pushy-client"])
def test_config_syntax_error_exits_2_with_file_and_line(tmp_path, program):
    config = tmp_path / "push-jobs-client.rb"
    config.write_text(
        "chef_server_url 'http://127.0.0.1:1/organizations/x'\n"
        "node_name 'n'\n"
        "whitelist({'chef-client' => 'chef-client'\n"  # unclosed
        "allow_unencrypted false\n"
    )
    command = (
        [sys.executable, "-m", "appliance", "client"]
        if program == "python -m"
        else pushy_client_program(tmp_path)
    )
    r = subprocess.run(
        [*command, "-c", str(config)], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"{config}:" in r.stderr
    where = r.stderr.split(f"{config}:", 1)[1]
    assert where.split(":", 1)[0].isdigit(), r.stderr


class _ConfigStandIn(http.server.BaseHTTPRequestHandler):
    body: bytes = b"{}"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


def _session_key_for_another_key(node_key_pem: str) -> str:
    """A session key encrypted to some other RSA key, that the node's key cannot open (with
    OpenSSL's implicit rejection a wrong key can, rarely, give 32 bytes: try another)."""
    node_key = load_private_pem(node_key_pem)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    for _ in range(50):
        encoded = encrypt_session_key(other, os.urandom(32))
        try:
            decrypt_session_key(node_key, encoded)
        except ValueError:
            return encoded
    raise AssertionError("no undecryptable session key in 50 tries")


@pytest.mark.parametrize("case", ["wrong-key", "missing"])
def test_session_key_the_client_cannot_decrypt_exits_255(tmp_path, case):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    config = {
        "type": "config",
        "push_jobs": {
            "heartbeat": {
                "out_addr": "tcp://127.0.0.1:9",
                "command_addr": "tcp://127.0.0.1:9",
                "interval": 1.0,
                "offline_threshold": 3,
                "online_threshold": 2,
            }
        },
        "public_key": _public_pem(key_pem),
        "curve_public_key": zmq.curve_keypair()[0].decode(),
        "lifetime": 3600,
        "max_message_skew": 300,
        "incarnation_id": "00000000-0000-4000-8000-000000000000",
    }
    if case == "wrong-key":
        config["encoded_session_key"] = {
            "method": "hmac_sha256",
            "key": _session_key_for_another_key(key_pem),
        }
    handler = type("Handler", (_ConfigStandIn,), {"body": json.dumps(config).encode()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        stand_in = Server(tmp_path / "unused")
        stand_in.ports = {"api_port": httpd.server_address[1]}
        client = ClientProcess(stand_in, "o", "n1", key_pem, tmp_path / "clients")
        r = subprocess.run(
            [sys.executable, "-m", "appliance", "client", "-c", str(client.config_path)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert r.returncode == 255, (r.stdout, r.stderr)
    assert "No session key found in config" in r.stderr
    assert "Traceback" not in r.stderr, r.stderr
