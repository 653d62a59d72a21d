"""``pushy admin …`` end to end: the CLI as a subprocess whose only configuration is what knife
would read (``~/.chef/credentials`` or ``~/.chef/knife.rb`` in a temporary HOME), against a real
server; keys it writes are used to sign real requests, and a node it bootstraps runs a real
``pushy client``."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.core.keys import load_private_pem
from appliance.localserver import ManagedProcess
from tests.support import REPO, Chef, server_fixture, setup_org, wait_for

server = server_fixture("knife-admin")
ORG = "kn"


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PUSHY_", "CHEF_", "KNIFE_")) and k != "HOME"
    }
    return {**env, "HOME": str(home), "PYTHONPATH": str(REPO), **extra}


def pushy(home: Path, *argv: str, **extra: str) -> subprocess.CompletedProcess:
    """``pushy ARGV`` run in ``home`` (its working directory too) with ``HOME=home``."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", *argv],
        cwd=home,
        env=_env(home, **extra),
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def failed(result: subprocess.CompletedProcess, code: int = 100) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    return result.stderr


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def admin(server) -> Chef:
    chef, _ = setup_org(server, ORG, ())
    return chef


@pytest.fixture(scope="module")
def home(server, admin, tmp_path_factory) -> Path:
    """An operator's HOME: ~/.chef/credentials (default profile) signs as pivotal in ORG."""
    path = tmp_path_factory.mktemp("operator")
    (path / ".chef").mkdir()
    (path / ".chef" / "credentials").write_text(
        "[default]\n"
        f'chef_server_url = "{server.url}/organizations/{ORG}"\n'
        'node_name = "pivotal"\n'
        f'client_key = "{server.pivotal_key}"\n'
    )
    return path


def knife_home(tmp_path: Path, server, user: str, org: str = ORG) -> Path:
    """A HOME whose ~/.chef/knife.rb is the one ``knife configure`` writes, key next to it."""
    path = tmp_path / f"home-{user}"
    (path / ".chef").mkdir(parents=True)
    (path / ".chef" / "knife.rb").write_text(
        "current_dir = File.dirname(__FILE__)\n"
        "log_level                :info\n"
        "log_location             STDOUT\n"
        f'node_name                "{user}"\n'
        f'client_key               "#{{current_dir}}/{user}.pem"\n'
        f'chef_server_url          "{server.url}/organizations/{org}"\n'
        'cookbook_path            ["#{current_dir}/../cookbooks"]\n'
        'knife[:editor] = "vim"\n'
    )
    return path


# --------------------------------------------------------------------------- organizations


def test_org_create_writes_the_validator_key_only_when_asked(home, admin):
    out = ok(
        pushy(home, "admin", "org", "create", "acme", "--full-name", "Acme Inc.", "-F", "json")
    )
    assert json.loads(out) == {
        "name": "acme",
        "uri": json.loads(out)["uri"],
        "validator": "acme-validator",
    }
    assert "PRIVATE KEY" not in out
    assert admin.get("/organizations/acme").json()["full_name"] == "Acme Inc."

    validator = home / "beta-validator.pem"
    ok(pushy(home, "admin", "org", "create", "beta", "--validator-key", str(validator)))
    assert mode(validator) == 0o600
    key = validator.read_text()
    load_private_pem(key)
    chef = Chef(admin.base_url, "beta-validator", key)  # the validator may register clients
    assert chef.post("/organizations/beta/clients", {"name": "v1"}).status_code == 201

    orgs = json.loads(ok(pushy(home, "admin", "org", "list", "-F", "json")))
    assert {"acme", "beta", ORG} <= set(orgs)
    assert ok(pushy(home, "admin", "org", "list")).splitlines() == sorted(orgs)

    err = failed(pushy(home, "admin", "org", "create", "acme"))
    assert err.startswith(
        "ERROR: POST /organizations: HTTP 409 Conflict: organization 'acme' already exists"
    )


# --------------------------------------------------------------------------- users and groups


@pytest.fixture(scope="module")
def reader1(admin):
    """The client named in the readers group above (a group only takes existing clients)."""
    r = admin.post(f"/organizations/{ORG}/clients", {"name": "reader1"})
    assert r.status_code == 201, r.text


def test_user_create_and_permissions_through_groups(home, admin, server, tmp_path, reader1):
    alice_home = knife_home(tmp_path, server, "alice")
    key_file = alice_home / ".chef" / "alice.pem"
    out = ok(
        pushy(
            home,
            "admin",
            "user",
            "create",
            "alice",
            "--email",
            "alice@example.com",
            "--first-name",
            "Alice",
            "--key-file",
            str(key_file),
        )
    )
    assert f"key_file: {key_file}" in out
    assert mode(key_file) == 0o600
    user = admin.get("/users/alice").json()
    assert (user["email"], user["first_name"], user["display_name"]) == (
        "alice@example.com",
        "Alice",
        "alice",
    )
    assert "alice" in json.loads(ok(pushy(home, "admin", "user", "list", "-F", "json")))

    # the file is checked before the server is asked: no user without its key
    before = key_file.read_text()
    err = failed(pushy(home, "admin", "user", "create", "bob", "--key-file", str(key_file)))
    assert "already exists; not overwriting it (use --force)" in err
    assert key_file.read_text() == before
    assert admin.get("/users/bob").status_code == 404

    # alice signs with the written key, configured by knife.rb only
    err = failed(pushy(alice_home, "admin", "group", "list"))
    assert f"HTTP 403 Forbidden: 'alice' is not associated with organization '{ORG}'" in err
    ok(pushy(home, "admin", "user", "add-to-org", "alice", ORG))
    assert "admins" in ok(pushy(alice_home, "admin", "group", "list")).split()

    alice = Chef(server.url, "alice", key_file.read_text())
    jobs = f"/organizations/{ORG}/pushy/jobs"
    job = {"command": "chef-client", "nodes": ["ghost"]}
    assert alice.get(jobs).status_code == 200  # no pushy_job_readers group: members may read
    assert alice.post(jobs, job).status_code == 403  # neither writer nor admin

    result = pushy(home, "admin", "group", "add", "alice", "pushy_job_writers", "-F", "json")
    assert json.loads(ok(result))["users"] == ["alice"]
    assert "Created group pushy_job_writers" in result.stderr
    assert alice.post(jobs, job).status_code == 201

    ok(pushy(home, "admin", "group", "add", "client:reader1", "pushy_job_readers"))
    assert alice.get(jobs).status_code == 403  # the group exists now, without alice
    ok(pushy(home, "admin", "group", "add", "user:alice", "pushy_job_readers"))
    assert alice.get(jobs).status_code == 200
    shown = json.loads(ok(pushy(home, "admin", "group", "show", "pushy_job_readers", "-F", "json")))
    assert (shown["users"], shown["clients"]) == (["alice"], ["reader1"])

    again = pushy(home, "admin", "group", "add", "alice", "pushy_job_readers")
    assert "already a member" in again.stderr and again.returncode == 0
    ok(pushy(home, "admin", "group", "remove", "alice", "pushy_job_readers"))
    assert alice.get(jobs).status_code == 403

    err = failed(pushy(home, "admin", "group", "add", "alice", "nosuchgroup"))
    assert "HTTP 404 Not Found: group 'nosuchgroup' not found" in err
    err = failed(pushy(home, "admin", "group", "add", "ghost", "admins"))
    assert "400" in err and "user 'ghost' is not a member" in err


# --------------------------------------------------------------------------- clients


def test_client_create_rotate_key_and_delete(home, admin, server):
    old_file, new_file = home / "c1.pem", home / "c1-new.pem"
    ok(pushy(home, "admin", "client", "create", "c1", "--key-file", str(old_file)))
    assert mode(old_file) == 0o600
    assert "c1" in ok(pushy(home, "admin", "client", "list")).split()
    path = f"/organizations/{ORG}/clients/c1"
    old = Chef(server.url, "c1", old_file.read_text())
    assert old.get(path).status_code == 200

    # an existing target file: refused before any key is made
    err = failed(pushy(home, "admin", "client", "rotate-key", "c1", "--key-file", str(old_file)))
    assert "already exists" in err
    assert [k["name"] for k in admin.get(path + "/keys").json()] == ["default"]

    out = json.loads(
        ok(
            pushy(
                home,
                "admin",
                "client",
                "rotate-key",
                "c1",
                "--key-file",
                str(new_file),
                "-F",
                "json",
            )
        )
    )
    assert out["deleted_keys"] == ["default"] and out["key_name"].startswith("rotated-")
    assert mode(new_file) == 0o600
    assert old.get(path).status_code == 401
    new = Chef(server.url, "c1", new_file.read_text())
    assert new.get(path).status_code == 200

    # --keep-old, then --force over the same file
    ok(
        pushy(
            home,
            "admin",
            "client",
            "rotate-key",
            "c1",
            "--key-file",
            str(new_file),
            "--force",
            "--keep-old",
        )
    )
    assert mode(new_file) == 0o600
    assert new.get(path).status_code == 200  # the previous key still works
    assert Chef(server.url, "c1", new_file.read_text()).get(path).status_code == 200
    assert len(admin.get(path + "/keys").json()) == 2

    assert ok(pushy(home, "admin", "client", "delete", "c1")) == "Deleted client[c1]\n"
    err = failed(pushy(home, "admin", "client", "delete", "c1"))
    assert (
        f"DELETE /organizations/{ORG}/clients/c1: HTTP 404 Not Found: client 'c1' not found" in err
    )


# --------------------------------------------------------------------------- node-bootstrap


class _Client(ManagedProcess):
    def __init__(self, config: Path, log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "appliance", "client", "-c", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )


def test_node_bootstrap_writes_a_config_a_real_client_runs(home, admin, tmp_path):
    out_dir = tmp_path / "nb1"
    out_dir.mkdir()
    result = pushy(
        home,
        "admin",
        "node-bootstrap",
        "nb1",
        "--output-dir",
        str(out_dir),
        "--file-dir",
        str(tmp_path / "files"),
        "--whitelist",
        '{"hello": "echo hello from nb1"}',
        "-E",
        "prod",
        "--role",
        "web",
    )
    config, key = out_dir / "push-jobs-client.rb", out_dir / "push-jobs-client.pem"
    assert f"next_step: pushy-client -c {config}" in ok(result)
    assert mode(key) == 0o600
    text = config.read_text()
    assert 'node_name "nb1"' in text and f'client_key "{key}"' in text
    assert 'whitelist({"hello"=>"echo hello from nb1"})' in text

    client = _Client(config, tmp_path / "nb1.log")
    try:
        state = f"/organizations/{ORG}/pushy/node_states/nb1"

        def available() -> bool:
            assert client.proc.poll() is None, client.log()
            return admin.get(state).json().get("availability") == "available"

        wait_for(available, 30, what="nb1 available")

        def found() -> bool:  # the README's query, on the node record the client published
            r = pushy(home, "node", "list", "--search", "role:web AND chef_environment:prod")
            return r.returncode == 0 and r.stdout.split() == ["nb1"]

        wait_for(found, 30, what="nb1 found by role and environment")
        r = admin.post(
            f"/organizations/{ORG}/pushy/jobs",
            {"command": "hello", "nodes": ["nb1"], "capture_output": True},
        )
        assert r.status_code == 201, r.text
        job_path = r.json()["uri"].split(admin.base_url, 1)[1]

        def done() -> dict | None:
            job = admin.get(job_path).json()
            return job if job["status"] not in ("new", "voting", "running") else None

        job = wait_for(done, 30, what="job ended")
        assert job["nodes"] == {"succeeded": ["nb1"]}, client.log()
        output = admin.get(
            job_path + "/output/nb1/stdout", headers={"Accept": "application/octet-stream"}
        )
        assert output.content == b"hello from nb1\n"
    finally:
        client.kill()

    err = failed(pushy(home, "admin", "node-bootstrap", "nb1", "--output-dir", str(tmp_path)))
    assert "client nb1 already exists" in err and "pushy admin client rotate-key nb1" in err


def test_node_bootstrap_to_stdout(home, server):
    out = ok(pushy(home, "admin", "node-bootstrap", "nb2"))
    assert f'chef_server_url "{server.url}/organizations/{ORG}"' in out
    assert 'node_name "nb2"' in out and 'client_key "/etc/chef/push-jobs-client.pem"' in out
    assert 'whitelist({"chef-client"=>"chef-client"})' in out
    assert "-----BEGIN" in out
    data = json.loads(ok(pushy(home, "admin", "node-bootstrap", "nb3", "-F", "json")))
    assert data["node"] == "nb3" and 'node_name "nb3"' in data["config"]
    load_private_pem(data["private_key"])
    err = failed(pushy(home, "admin", "node-bootstrap", "nb4", "--whitelist", '["a"]'))
    assert "--whitelist must be a JSON object" in err


# --------------------------------------------------------------------------- errors


def test_configuration_and_usage_errors(home, tmp_path):
    err = failed(pushy(home, "admin", "org", "list", "--server-url", "http://127.0.0.1:9"))
    assert err.startswith("ERROR: cannot reach http://127.0.0.1:9")
    err = failed(pushy(home, "admin", "org", "list", "--profile", "prod"))
    assert "profile 'prod' (from --profile) not found in ~/.chef/credentials (default)" in err
    err = failed(pushy(home, "admin", "org", "list", "-c", "nope.rb"))
    assert "nope.rb (-c) does not exist" in err
    err = failed(pushy(home, "admin", "client", "create", "x"), code=2)  # argparse: --key-file
    assert "--key-file" in err
    bad = tmp_path / "bad.rb"
    bad.write_text("node_name `whoami`\n")
    err = failed(pushy(home, "admin", "org", "list", "-c", str(bad)))
    assert f"{bad}:1: cannot evaluate node_name" in err
    err = failed(pushy(home, "admin", "org", "list", "-u", "nobody", "-k", str(home / "none")))
    assert "cannot read the key" in err
