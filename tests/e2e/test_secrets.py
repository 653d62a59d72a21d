"""Issue 7, secrets on disk, end to end: file modes of everything secret, and no key in any log.

One scenario per module, with the server and a real client both at debug level: the operator
CLI (``pushy admin``) creates an organization (validator key), a user, a client whose key is
rotated, and bootstraps a node; that node's ``pushy client`` fetches its config, runs jobs
with a file and an env, is told to reconfigure (a second config fetch: a new session key),
and stops; then the server stops. A small ``log_segment_max_bytes`` makes it write several
segments and snapshots. Then:

* the state directory and everything in it is private (0700 dirs, 0600 files, our owner);
  the key files ``pushy admin`` writes are 0600; the bootstrapped client config holds no key;
  a client whose key others may read says so in its log;
* no private key (PEM block or any base64 line of its body), no session key (base64 or hex,
  every one the store ever recorded, read back through the event log API), no CURVE secret
  (the server's, from the store; the client's, recognised by deriving its public key and
  comparing it with every ``ccpk`` the store recorded) appears in the server log, the client
  log, the CLI's output or the jobs' output; the store itself holds no private key;
* a job inherits no open descriptor from the client (its key, sockets).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
import zmq

from appliance.localserver import ManagedProcess
from appliance.store.log import EventLog
from tests.support import REPO, Chef, Server, wait_for

ORG = "secrets"
Z85 = r"0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#"
Z85_RUN = re.compile(f"[{Z85}]{{40,}}")
MAX_Z85_WINDOWS = 2_000_000  # the client-secret scan must look at everything, within bounds


class Client(ManagedProcess):
    """``pushy client -c CONFIG -l debug`` with its output in ``log_path``."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "appliance", "client", "-c", str(config), "-l", "debug"],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )


@dataclass
class Scenario:
    root: Path
    server: Server
    home: Path
    admin: Chef
    key_files: list[Path] = field(default_factory=list)  # written by pushy admin
    bootstrap_config: Path | None = None
    client_log: Path | None = None
    exposed_log: Path | None = None
    cli_output: list[str] = field(default_factory=list)
    job_outputs: list[bytes] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)  # every record of the event log


def pushy(scenario: Scenario, *argv: str) -> str:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PUSHY_", "CHEF_", "KNIFE_")) and k != "HOME"
    }
    result = subprocess.run(
        [sys.executable, "-m", "appliance", *argv],
        cwd=scenario.home,
        env={**env, "HOME": str(scenario.home), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, (argv, result.stdout, result.stderr)
    scenario.cli_output.append(result.stdout + result.stderr)
    return result.stdout


def run_job(scenario: Scenario, node: str, body: dict) -> dict:
    admin = scenario.admin
    r = admin.post(f"/organizations/{ORG}/pushy/jobs", {"nodes": [node], **body})
    assert r.status_code == 201, r.text
    path = f"/organizations/{ORG}/pushy/jobs/{r.json()['id']}"

    def ended() -> dict | None:
        job = admin.get(path).json()
        return job if job["status"] not in ("new", "voting", "running") else None

    job = wait_for(ended, 30, what="job ended")
    for channel in ("stdout", "stderr"):
        out = admin.get(
            f"{path}/output/{node}/{channel}", headers={"Accept": "application/octet-stream"}
        )
        if out.status_code == 200:
            scenario.job_outputs.append(out.content)
    return job


def wait_available(scenario: Scenario, node: str, client: ManagedProcess) -> None:
    path = f"/organizations/{ORG}/pushy/node_states/{node}"

    def available() -> bool:
        assert client.proc.poll() is None, client.log()
        return scenario.admin.get(path).json().get("availability") == "available"

    wait_for(available, 30, what=f"{node} available")


# the shell's own open descriptors, listed by a child (no command substitution pipe)
SHOW = 'env; cat "$CHEF_PUSH_JOB_FILE"; echo; echo fds:; ls /proc/$$/fd'


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Scenario:
    root = tmp_path_factory.mktemp("secrets")
    server = Server(root / "state", log_segment_max_bytes=4096).start()
    home = root / "operator"
    (home / ".chef").mkdir(parents=True)
    (home / ".chef" / "credentials").write_text(
        "[default]\n"
        f'chef_server_url = "{server.url}/organizations/{ORG}"\n'
        'node_name = "pivotal"\n'
        f'client_key = "{server.pivotal_key}"\n'
    )
    s = Scenario(root, server, home, Chef(server.url, "pivotal", server.pivotal_key.read_bytes()))
    clients: list[ManagedProcess] = []
    try:
        _play(s, clients)
    finally:
        for client in clients:
            client.kill()
        if server.proc is not None and server.proc.poll() is None:
            server.stop()
    log = EventLog(root / "state")
    snapshot, records = log.open()
    try:
        if snapshot is not None:
            s.records.extend(orjson.loads(snapshot[0]))
        s.records.extend(orjson.loads(payload) for _, payload, _ in records)
    finally:
        log.close()
    return s


def _play(s: Scenario, clients: list[ManagedProcess]) -> None:
    keys = s.home / "keys"
    keys.mkdir()
    validator = keys / "validator.pem"
    pushy(s, "admin", "org", "create", ORG, "--validator-key", str(validator))
    s.key_files.append(validator)
    alice = keys / "alice.pem"
    pushy(s, "admin", "user", "create", "alice", "--key-file", str(alice))
    pushy(s, "admin", "user", "add-to-org", "alice", ORG)
    s.key_files.append(alice)
    old, new = keys / "c2.pem", keys / "c2-rotated.pem"
    pushy(s, "admin", "client", "create", "c2", "--key-file", str(old))
    pushy(s, "admin", "client", "rotate-key", "c2", "--key-file", str(new), "--keep-old")
    s.key_files += [old, new]

    node_dir = s.root / "n1"
    node_dir.mkdir()
    whitelist = json.dumps({"show": SHOW, "hello": "echo hello"})
    pushy(
        s,
        "admin",
        "node-bootstrap",
        "n1",
        "--output-dir",
        str(node_dir),
        "--file-dir",
        str(s.root / "files"),
        "--whitelist",
        whitelist,
    )
    s.bootstrap_config = node_dir / "push-jobs-client.rb"
    s.key_files.append(node_dir / "push-jobs-client.pem")
    s.client_log = s.root / "n1-client.log"
    client = Client(s.bootstrap_config, s.client_log)
    clients.append(client)
    wait_available(s, "n1", client)
    body = {
        "command": "show",
        "capture_output": True,
        "file": "raw:job file contents",
        "env": {"JOB_VAR": "v"},
    }
    job = run_job(s, "n1", body)
    assert job["nodes"] == {"succeeded": ["n1"]}, client.log()
    # a reconfigure: a second config fetch, so a second session key. Signed a second later at
    # least: the same second signs the same bytes, a replay that gets the same key again
    # (core.servedfetches)
    time.sleep(1.1)
    fetches = client.log().count("Retrieving configuration from")
    client.proc.send_signal(signal.SIGUSR1)
    wait_for(
        lambda: client.log().count("Retrieving configuration from") > fetches,
        30,
        what="the reconfigure's config fetch",
    )
    wait_for(lambda: "Command channel up" in client.log().rsplit("Retrieving", 1)[1], 30)
    wait_available(s, "n1", client)
    job = run_job(s, "n1", {**body, "command": "show"})
    assert job["nodes"] == {"succeeded": ["n1"]}, client.log()
    assert client.stop() == 0

    # a node whose key others may read: its client says so
    exposed_dir = s.root / "n3"
    exposed_dir.mkdir()
    pushy(s, "admin", "node-bootstrap", "n3", "--output-dir", str(exposed_dir))
    (exposed_dir / "push-jobs-client.pem").chmod(0o644)
    s.exposed_log = s.root / "n3-client.log"
    exposed = Client(exposed_dir / "push-jobs-client.rb", s.exposed_log)
    clients.append(exposed)
    wait_available(s, "n3", exposed)
    assert exposed.stop() == 0


# ---------------------------------------------------------------------------------------------
# Modes


def test_the_state_dir_and_everything_in_it_is_private(scenario):
    state_dir = scenario.server.state_dir
    uid = os.geteuid()
    files = [p for p in state_dir.rglob("*") if not p.is_dir()]
    dirs = [state_dir, *(p for p in state_dir.rglob("*") if p.is_dir())]
    names = {p.name for p in files}
    assert {"server.pem", "pivotal.pem", "LOCK"} <= names, names
    # the small segment size made it rotate and snapshot: every kind of file is checked
    assert sum(n.endswith(".seg") for n in names) >= 2, names
    assert sum(n.endswith(".snap") for n in names) >= 1, names
    for path in dirs:
        info = path.lstat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o700, uid), path
    for path in files:
        info = path.lstat()
        assert stat.S_ISREG(info.st_mode), path
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, uid), path


def test_key_files_written_by_pushy_admin_are_private(scenario):
    assert len(scenario.key_files) == 5
    for path in scenario.key_files:
        info = path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, os.geteuid()), path
        assert path.read_text().startswith("-----BEGIN"), path


def test_the_bootstrapped_client_config_holds_no_key(scenario):
    text = scenario.bootstrap_config.read_text()
    assert "-----BEGIN" not in text and "PRIVATE" not in text
    key = scenario.bootstrap_config.with_name("push-jobs-client.pem")
    assert f'client_key "{key}"' in text
    assert stat.S_IMODE(scenario.bootstrap_config.stat().st_mode) & 0o022 == 0


def test_a_client_says_so_when_its_key_is_readable_by_others(scenario):
    exposed = scenario.exposed_log.read_text()
    assert "is accessible to group or others (mode 0644)" in exposed
    assert "accessible to group or others" not in scenario.client_log.read_text()


# ---------------------------------------------------------------------------------------------
# Secrets never written where they do not belong


def _private_key_lines(scenario: Scenario) -> set[str]:
    """Every base64 line of every private key body (the server's, pivotal's, pushy admin's)."""
    state_dir = scenario.server.state_dir
    lines: set[str] = set()
    for path in [state_dir / "server.pem", state_dir / "pivotal.pem", *scenario.key_files]:
        body = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("-----")]
        assert len(body) > 10, path
        lines.update(ln for ln in body if len(ln) >= 40)  # the short last line could collide
    return lines


def _session_keys(scenario: Scenario) -> set[bytes]:
    found: set[bytes] = set()
    for record in scenario.records:
        if record.get("type") == "session_key":
            found.add(base64.b64decode(record["key"]))
        elif record.get("type") == "node_keys_restore":
            found.update(base64.b64decode(record[k]) for k in ("key", "previous") if record[k])
    return found


def _texts(scenario: Scenario) -> dict[str, str]:
    texts = {
        "server log": scenario.server.log_path.read_text(errors="replace"),
        "client log": scenario.client_log.read_text(errors="replace"),
        "exposed client log": scenario.exposed_log.read_text(errors="replace"),
        "pushy admin output": "\n".join(scenario.cli_output),
    }
    for i, out in enumerate(scenario.job_outputs):
        texts[f"job output {i}"] = out.decode("utf-8", "replace")
    return texts


def test_no_pem_block_or_private_key_line_in_any_log_or_output(scenario):
    lines = _private_key_lines(scenario)
    for name, text in _texts(scenario).items():
        assert "-----BEGIN" not in text, name
        leaked = [ln for ln in lines if ln in text]
        assert leaked == [], (name, leaked[:3])


def test_no_session_key_in_any_log_or_output(scenario):
    keys = _session_keys(scenario)
    assert len(keys) == 3, keys  # n1 fetched twice, n3 once; each fetch makes a new key
    for name, text in _texts(scenario).items():
        for key in keys:
            for form in (
                base64.b64encode(key).decode(),
                base64.b64encode(key).decode().rstrip("="),
                base64.urlsafe_b64encode(key).decode().rstrip("="),
                key.hex(),
                repr(key)[2:-1],
            ):
                assert form not in text, (name, form)


def test_no_curve_secret_in_any_log_or_output(scenario):
    servers = [r for r in scenario.records if r.get("type") == "server_init"]
    assert len(servers) == 1
    server_secret = servers[0]["curve_secret"]
    ccpks = {r["key"] for r in scenario.records if r.get("type") == "ccpk" and r.get("key")}
    ccpks |= {r["ccpk"] for r in scenario.records if r.get("type") == "node_keys_restore"}
    ccpks.discard(None)
    assert len(ccpks) == 2, ccpks  # n1 (one CURVE pair per process, A.0) and n3
    publics = {servers[0]["curve_public"].encode(), *(k.encode() for k in ccpks)}
    windows = 0
    for name, text in _texts(scenario).items():
        assert server_secret not in text, name
        for run in Z85_RUN.finditer(text):
            token = run.group()
            for i in range(len(token) - 39):
                windows += 1
                assert windows < MAX_Z85_WINDOWS, "too much Z85-like text to scan"
                candidate = token[i : i + 40].encode()
                try:
                    public = zmq.curve_public(candidate)
                except (zmq.ZMQError, ValueError):
                    continue
                assert public not in publics, (name, "a CURVE secret key is logged")


def test_the_store_holds_no_private_key(scenario):
    """Keys the server made for clients are handed out once, never persisted."""
    assert scenario.records, "the event log was read"
    blob = orjson.dumps(scenario.records).decode()
    assert "PRIVATE KEY" not in blob
    for line in _private_key_lines(scenario):
        assert line not in blob


def test_a_job_inherits_no_descriptor_of_the_client(scenario):
    outputs = [o for o in scenario.job_outputs if b"fds:\n" in o]
    assert len(outputs) == 2
    for out in outputs:
        fds = out.rsplit(b"fds:\n", 1)[1].split()
        assert fds == [b"0", b"1", b"2"], out[-200:]
        assert b"job file contents" in out  # the job did get its own file


def test_bytes_cut_from_a_torn_log_are_kept_private(scenario, tmp_path):
    """Regression: the bytes a torn tail loses are kept aside (``*.corrupt-OFFSET``) and may
    hold session keys; that copy was written with the umask's mode (0644)."""
    copy = tmp_path / "state"
    shutil.copytree(scenario.server.state_dir, copy)
    last = max((copy / "log").glob("*.seg"))
    with open(last, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x01\x02")  # the start of a record that never got written
    log = EventLog(copy)
    try:
        _, records = log.open()
        assert len(list(records)) > 0
    finally:
        log.close()
    kept = list((copy / "log").glob("*.corrupt-*"))
    assert len(kept) == 1, sorted(p.name for p in (copy / "log").iterdir())
    assert stat.S_IMODE(kept[0].stat().st_mode) == 0o600
