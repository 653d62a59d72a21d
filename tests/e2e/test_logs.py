"""Issue 17, logs: ``log_format``, journald, and no key in any format.

Two runs, each a real server (with its edge processes) and a real ``pushy client``, both at
debug level, through a config fetch and a job: one in ``json``, one in ``text`` with
``JOURNAL_STREAM`` naming each process's log file (as systemd sets it). Every json line of
the server, its edges and the client is parsed; the journald text lines carry no timestamp;
and neither run's logs hold the server's private key, the superuser's, the client's, or the
node's session key (read back from its config).
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from appliance.core.keys import decrypt_session_key, load_private_pem
from tests.support import ClientFleet, Server

ORG = "logs"
LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
TIMESTAMP = re.compile(r"^\[?\d{4}-\d\d-\d\d[ T]\d\d:\d\d")


@dataclass
class Run:
    server_log: str
    client_log: str
    secrets: dict[str, str]  # what → text that must not appear


def journal_of(path: Path) -> dict[str, str]:
    """JOURNAL_STREAM as systemd sets it for a process whose output is ``path``."""
    path.touch()
    st = os.stat(path)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def _pem_lines(pem: str) -> dict[str, str]:
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    return {f"private key line {i}": line for i, line in enumerate(body)}


def play(tmp: Path, fmt: str, *, journal: bool) -> Run:
    state = tmp / "state"
    state.parent.mkdir(parents=True, exist_ok=True)
    srv = Server(state, log_format=fmt)
    if journal:
        srv.env = journal_of(srv.log_path)
    clients = tmp / "clients"
    clients.mkdir()
    client_env = journal_of(clients / "n1-client.log") if journal else None
    with srv:
        fleet = ClientFleet(srv, ORG, clients)
        try:
            client = fleet.add(
                "n1",
                whitelist='{"hi"=>"echo hi"}',
                extra=f"log_format '{fmt}'\n",
                flags=("-l", "debug"),
                env=client_env,
            )
            fleet.wait_available("n1")
            job = fleet.run("hi", ["n1"])
            assert job["status"] == "complete" and job["nodes"] == {"succeeded": ["n1"]}, job
            # the node's current session key: the superuser's fetch reads it without rotating
            pivotal = srv.pivotal_key.read_text()
            r = fleet.admin.get(f"/organizations/{ORG}/pushy/config/n1?ccpk=" + "0" * 40)
            assert r.status_code == 200, r.text
            session = decrypt_session_key(
                load_private_pem(pivotal), r.json()["encoded_session_key"]["key"]
            )
        finally:
            fleet.close()
        secrets = {
            "session key (base64)": base64.b64encode(session).decode(),
            "session key (hex)": session.hex(),
            **{f"server {k}": v for k, v in _pem_lines((state / "server.pem").read_text()).items()},
            **{f"pivotal {k}": v for k, v in _pem_lines(pivotal).items()},
            **{f"client {k}": v for k, v in _pem_lines(client.key_path.read_text()).items()},
        }
    return Run(srv.log_path.read_text(), client.log_path.read_text(), secrets)


@pytest.fixture(scope="module")
def json_run(tmp_path_factory) -> Run:
    return play(tmp_path_factory.mktemp("json"), "json", journal=False)


@pytest.fixture(scope="module")
def journal_run(tmp_path_factory) -> Run:
    return play(tmp_path_factory.mktemp("journal"), "text", journal=True)


def _parsed(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines
    out = []
    for line in lines:
        item = json.loads(line)  # every line is one object
        assert isinstance(item, dict), line
        assert set(item) >= {"time", "level", "logger", "message"}, line
        t = datetime.fromisoformat(item["time"])
        assert (
            item["time"].endswith("Z")
            and t.tzinfo is not None
            and t.utcoffset() == UTC.utcoffset(t)
        )
        assert item["level"] in LEVELS, line
        assert isinstance(item["logger"], str) and isinstance(item["message"], str), line
        out.append(item)
    return out


def test_every_json_line_of_the_server_its_edges_and_the_client_parses(json_run):
    server = _parsed(json_run.server_log)
    loggers = {item["logger"] for item in server}
    assert {"pushy.server", "pushy.edge"} <= loggers, loggers  # the edges write json too
    assert any(item["level"] == "DEBUG" for item in server)
    client = _parsed(json_run.client_log)
    messages = [item["message"] for item in client]
    assert any("Retrieving configuration from" in m for m in messages), messages
    assert any(item["level"] == "DEBUG" for item in client)


def test_under_journald_text_lines_carry_no_timestamp(journal_run):
    for name, text in (("server", journal_run.server_log), ("client", journal_run.client_log)):
        lines = [line for line in text.splitlines() if line.strip()]
        assert lines, name
        stamped = [line for line in lines if TIMESTAMP.match(line)]
        assert not stamped, (name, stamped[:3])
    assert re.search(r"^INFO pushy\.edge: ", journal_run.server_log, re.M)  # the edges too
    assert re.search(r"^INFO pushy\.server: ", journal_run.server_log, re.M)
    assert re.search(r"^INFO: \[n1\] Retrieving configuration from ", journal_run.client_log, re.M)


@pytest.mark.parametrize("which", ["json_run", "journal_run"])
def test_no_key_or_session_key_in_any_log(which, request):
    run: Run = request.getfixturevalue(which)
    pem = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
    assert not pem.search(run.server_log) and not pem.search(run.client_log)
    for what, secret in run.secrets.items():
        assert secret not in run.server_log, what
        assert secret not in run.client_log, what
