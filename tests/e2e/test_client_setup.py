"""A node set up the documented ways, end to end with real ``pushy client`` processes (issue 17):

* no configuration at all: the client names the files it searched, in order, and how to make
  one, and exits 2 (never a traceback, never a message about ``chef_server``);
* a key the server does not know, or a node name it has no client for: the client says once
  what to fix (node, key file, server URL, the command), then one short line per retry, and
  picks up the right key copied in place without a restart;
* node search fed from the client: ``environment``/``roles``/``tags`` in push-jobs-client.rb,
  or ``-E``/``--role``/``--tag`` on the command line, make the README's
  ``role:web AND chef_environment:prod`` select exactly those nodes, through ``pushy node
  list --search`` and ``pushy job start -s``; a changed ``environment`` is published again on
  ``HUP``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.client.config import DEFAULT_SEARCH
from appliance.core.keys import generate_rsa, private_pem
from tests.support import REPO, ClientFleet, ClientProcess, Server, wait_for

ORG = "setup"
README_QUERY = "role:web AND chef_environment:prod"
WHITELIST = '{"hello"=>"echo hello from $CHEF_PUSH_NODE_NAME"}'


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    work = tmp_path_factory.mktemp("clientsetup")
    server = Server(work / "state").start()
    fleet = ClientFleet(server, ORG, work / "clients")
    try:
        yield fleet
    finally:
        fleet.close()
        server.kill()


def pushy(fleet: ClientFleet, *args: str) -> subprocess.CompletedProcess:
    server = fleet.server
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args, "--server-url",
         f"{server.url}/organizations/{ORG}", "-u", "pivotal", "-k", str(server.pivotal_key)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# no configuration


@pytest.mark.skipif(
    any(os.path.exists(p) for p in DEFAULT_SEARCH),
    reason="this machine has a client config in /etc/chef",
)
@pytest.mark.parametrize("how", ["pushy-client", "pushy client"])
def test_bare_client_names_the_files_it_tried_and_exits_2(how, tmp_path):
    script = Path(sys.executable).parent / "pushy-client"
    if how == "pushy-client" and not script.exists():
        pytest.skip("no pushy-client console script next to this Python")
    command = [str(script)] if how == "pushy-client" else [sys.executable, "-m", "appliance"]
    command += [] if how == "pushy-client" else ["client"]
    r = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert lines[0] == (
        f"pushy-client: no configuration file: tried {', '.join(DEFAULT_SEARCH)} (in this "
        "order); none exists, and no -c FILE was given."
    )
    assert lines[1] == (
        "pushy-client: chef_server_url is not set: it must end in /organizations/ORG_NAME"
    )
    assert "pushy admin node-bootstrap NODE" in lines[2] and "docs/installation.md" in lines[2]
    assert "Traceback" not in r.stderr and "chef_server must" not in r.stderr

    # the URL on the command line, no key: the key is what is missing, and still no config
    r = subprocess.run(
        [*command, "-S", "http://127.0.0.1:9/organizations/x", "-k", str(tmp_path / "no.pem")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert (
        f"pushy-client: cannot read the client key {tmp_path / 'no.pem'}: No such file or directory"
    ) in r.stderr.splitlines()
    assert "pushy-client: no configuration file: tried" in r.stderr


# ---------------------------------------------------------------------------------------------
# refused config fetch


def _wait_log(client: ClientProcess, text: str, seconds: float = 30) -> str:
    def seen() -> str | None:
        assert client.proc is not None and client.proc.poll() is None, client.log()
        log = client.log()
        return log if text in log else None

    return wait_for(seen, seconds, what=f"{text!r} in {client.name}'s log")


def test_wrong_key_says_what_to_fix_once_and_takes_the_right_key(fleet):
    client = fleet.add("wrongkey", whitelist=WHITELIST, start=False)
    right = client.key_path.read_text()
    client.key_path.write_text(private_pem(generate_rsa(2048)))
    client.start()
    url = f"{fleet.server.url}/organizations/{ORG}"
    _wait_log(client, "still refused (HTTP 401")
    log = client.log()
    explained = [line for line in log.splitlines() if "ERROR:" in line]
    assert len(explained) == 1, log
    assert (
        f"[wrongkey] Could not download push jobs config: The server {url} refuses node "
        "'wrongkey' (HTTP 401: Invalid signature for user or client 'wrongkey'). The server "
        f"does not know the key in {client.key_path}: give the client a new key on a "
        f"workstation with `pushy admin client rotate-key wrongkey -o {ORG} --key-file FILE` "
        f"and copy FILE to {client.key_path}, or copy the node's right key to "
        f"{client.key_path}. The client re-reads the key file before every retry"
    ) in explained[0]
    short = [line for line in log.splitlines() if "still refused" in line]
    assert all(line.split("] ", 1)[1].startswith("WARNING: [wrongkey] still") for line in short)

    client.key_path.write_text(right)  # the fix the message gives, without a restart
    fleet.wait_available("wrongkey", seconds=60)
    assert f"Using the new private key in {client.key_path}" in client.log()


def test_unknown_node_name_says_there_is_no_such_client(fleet, tmp_path):
    key = private_pem(generate_rsa(2048))
    client = ClientProcess(fleet.server, ORG, "nosuchnode", key, tmp_path).start()
    try:
        log = _wait_log(client, "refuses node 'nosuchnode'")
        assert (
            f"The server has no client named 'nosuchnode' in organization '{ORG}': create it "
            f"on a workstation with `pushy admin node-bootstrap nosuchnode -o {ORG}"
        ) in log
    finally:
        client.kill()


# ---------------------------------------------------------------------------------------------
# node search fed by the client


def test_readme_search_reaches_the_nodes_set_up_in_the_config_or_on_the_command_line(fleet):
    fleet.add("web-prod", whitelist=WHITELIST, extra="environment 'prod'\nroles ['web']\n")
    fleet.add("web-dev", whitelist=WHITELIST, extra="environment 'dev'\nroles ['web']\n")
    fleet.add("db-prod", whitelist=WHITELIST, extra="environment 'prod'\nroles ['db']\n")
    fleet.add(
        "web-flags",
        whitelist=WHITELIST,
        extra="environment 'dev'\n",  # the flag wins over the file
        flags=("-E", "prod", "--role", "web", "--role", "cache", "--tag", "canary"),
    )
    fleet.wait_available("web-prod", "web-dev", "db-prod", "web-flags", seconds=60)
    wanted = "web-flags\nweb-prod\n"

    def listed() -> str | None:
        r = pushy(fleet, "node", "list", "--search", README_QUERY)
        assert r.returncode == 0, r.stderr
        return r.stdout if r.stdout == wanted else None

    wait_for(listed, 30, what=f"{README_QUERY!r} listing the two prod web nodes")
    r = pushy(fleet, "node", "list", "--search", "tags:canary AND role:cache")
    assert (r.returncode, r.stdout) == (0, "web-flags\n")
    node = fleet.admin.get(f"/organizations/{ORG}/nodes/web-flags").json()
    assert node["chef_environment"] == "prod"
    assert node["run_list"] == ["role[web]", "role[cache]"]

    r = pushy(fleet, "job", "start", "hello", "-s", README_QUERY, "--capture", "-F", "json")
    assert r.returncode == 0, (r.stdout, r.stderr)
    job = json.loads(r.stdout)
    assert job["nodes"] == {"succeeded": ["web-flags", "web-prod"]}
    for name in ("web-flags", "web-prod"):
        assert fleet.output(job["id"], name).content == f"hello from {name}\n".encode()


def test_hup_publishes_a_changed_environment(fleet):
    """After the test above: web-dev's file now says prod; a HUP re-publishes its record."""
    client = fleet.clients.get("web-dev")
    if client is None or client.proc is None or client.proc.poll() is not None:
        pytest.skip("needs web-dev from the test above")
    text = client.config_path.read_text()
    client.config_path.write_text(text.replace("environment 'dev'", "environment 'prod'"))
    client.proc.send_signal(signal.SIGHUP)

    def listed() -> str | None:
        r = pushy(fleet, "node", "list", "--search", README_QUERY)
        assert r.returncode == 0, r.stderr
        return r.stdout if "web-dev" in r.stdout else None

    assert wait_for(listed, 30, what="web-dev found as prod") == "web-dev\nweb-flags\nweb-prod\n"
    assert "received HUP: re-reading the configuration" in client.log()
