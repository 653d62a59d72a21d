"""The ``pushy`` command line: settings errors, --version, raw requests, the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from appliance.core.keys import generate_rsa, private_pem
from tests.support import REPO


def pushy(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_version_and_help():
    r = pushy("--version")
    assert r.returncode == 0 and r.stdout.startswith("pushy ")
    r = pushy("server", "--help")
    assert r.returncode == 0 and "--state-dir" in r.stdout and "--config" in r.stdout


def test_unknown_setting_is_named_and_exits_2(tmp_path):
    config = tmp_path / "s.toml"
    config.write_text("hearbeat_interval = 1000\n")
    r = pushy("server", "--config", str(config), "--state-dir", str(tmp_path / "st"))
    assert r.returncode == 2
    assert "hearbeat_interval" in r.stderr
    assert not (tmp_path / "st").exists()


def test_bad_value_is_named_and_exits_2(tmp_path):
    config = tmp_path / "s.toml"
    config.write_text('heartbeat_interval = "fast"\n')
    r = pushy("server", "--config", str(config), "--state-dir", str(tmp_path / "st"))
    assert r.returncode == 2 and "heartbeat_interval" in r.stderr


def test_invalid_toml_exits_2(tmp_path):
    config = tmp_path / "s.toml"
    config.write_text("api_port = = 3\n")
    r = pushy("server", "--config", str(config))
    assert r.returncode == 2 and "not valid TOML" in r.stderr


def test_missing_config_file_exits_2(tmp_path):
    r = pushy("server", "--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "cannot read" in r.stderr


def test_first_start_creates_private_state(server):
    assert oct(server.state_dir.stat().st_mode & 0o777) == "0o700"
    assert oct(server.pivotal_key.stat().st_mode & 0o777) == "0o600"
    assert oct((server.state_dir / "server.pem").stat().st_mode & 0o777) == "0o600"
    assert "pivotal.pem" in server.log()


NO_CONFIG = {"PUSHY_SERVER_URL": "", "PUSHY_USER": "", "PUSHY_KEY": "", "PUSHY_ORG": ""}
NO_CONFIG |= {"PUSHY_PROFILE": "", "CHEF_PROFILE": "", "KNIFE_HOME": ""}


def test_raw_signs_with_flags_knife_config_credentials_and_profiles(server, tmp_path):
    key = str(server.pivotal_key)
    home = tmp_path / "home"
    (home / ".chef").mkdir(parents=True)
    env = {**NO_CONFIG, "HOME": str(home), "CHEF_CREDENTIALS_FILE": ""}
    flags = ["--server-url", server.url, "-u", "pivotal", "-k", key]
    body = '{"name": "rawcfg", "full_name": "R"}'
    r = pushy("raw", "-m", "POST", "/organizations", "-d", body, *flags, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["clientname"] == "rawcfg-validator"
    by_environment = {**env, "PUSHY_SERVER_URL": server.url, "PUSHY_KEY": key}
    r = pushy("raw", "/organizations/nosuch/pushy/jobs", env=by_environment)
    assert r.returncode == 1
    assert r.stderr.startswith(
        "ERROR: HTTP 404 Not Found: organization 'nosuch' does not exist.\n"
    ), r.stderr
    (home / ".chef" / "credentials").write_text(
        f"[prod]\nclient_name = 'pivotal'\nclient_key = '{key}'\n"
        f"chef_server_url = '{server.url}/organizations/rawcfg'\n"
    )
    # --profile (a usage error before), and a path relative to the organization as in knife raw
    r = pushy("raw", "--profile", "prod", "clients", env=env)
    assert r.returncode == 0, r.stderr
    assert "rawcfg-validator" in json.loads(r.stdout)
    r = pushy("raw", "--profile", "nosuch", "/users", env=env)
    assert r.returncode == 100 and "profile 'nosuch' (from --profile) not found" in r.stderr
    knife = tmp_path / "knife.rb"
    knife.write_text(
        f"chef_server_url '{server.url}/organizations/rawcfg'\n"
        f"node_name 'pivotal'\nclient_key '{key}'\n"
    )
    r = pushy("raw", "-c", str(knife), "/organizations/rawcfg/clients", env=env)
    assert r.returncode == 0 and "rawcfg-validator" in json.loads(r.stdout), r.stderr
    # flags beat the config file: an unknown user is the server's 401, said in plain text
    r = pushy("raw", "-c", str(knife), "-u", "nobody", "/users", env=env)
    assert r.returncode == 1
    first = r.stderr.splitlines()[0]
    assert first.startswith("ERROR: HTTP 401 Unauthorized: "), r.stderr
    assert "{" not in first and "[" not in first, first
    # no configuration at all: the local appliance's defaults, as for every command
    r = pushy("raw", "/users", env={**env, "HOME": str(tmp_path / "empty")})
    assert r.returncode == 100 and "/var/lib/pushy/pivotal.pem" in r.stderr, r.stderr


def test_one_exit_status_when_the_server_cannot_be_reached(tmp_path):
    key = tmp_path / "pivotal.pem"
    key.write_text(private_pem(generate_rsa()))
    env = {**NO_CONFIG, "PUSHY_SERVER_URL": "http://127.0.0.1:9/organizations/o"}
    env |= {"PUSHY_KEY": str(key), "HOME": str(tmp_path)}
    for command in (["raw", "/pushy/_status"], ["job", "list"], ["node", "status"]):
        r = pushy(*command, env=env)
        assert r.returncode == 100, (command, r.stderr)
        assert r.stderr.startswith("ERROR: cannot reach http://127.0.0.1:9"), r.stderr


def test_every_operator_command_help_ends_with_the_exit_status_table(capsys):
    from appliance.cli import main

    for command in ([], ["raw"], ["job", "start"], ["node", "status"], ["admin", "org", "list"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "100 the server cannot be reached" in text, command
        assert "2 a bad command line" in text and "130 interrupted" in text, command


def complete(script: str, *words: str) -> list[str]:
    """What TAB offers after ``words`` (the last one being completed), in a real bash."""
    program = (
        f"{script}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        'COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}\n'
        "_pushy; printf '%s\\n' \"${COMPREPLY[@]}\"\n"
        "complete -p pushy >&2\n"
    )
    r = subprocess.run(
        ["bash", "--norc", "-c", program], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0 and "-F _pushy" in r.stderr, r.stderr
    return [line for line in r.stdout.splitlines() if line]


def test_bash_completion_completes_commands_and_options():
    r = pushy("completion", "bash")
    assert r.returncode == 0, r.stderr
    script = r.stdout
    assert complete(script, "pushy", "jo") == ["job"]
    assert complete(script, "pushy", "job", "s") == ["start", "status"]
    assert complete(script, "pushy", "job", "start", "--allow") == ["--allow-unknown-nodes"]
    assert complete(script, "pushy", "-h", "node", "") == ["status", "list"]
    assert complete(script, "pushy", "raw", "--pro") == ["--profile"]
    assert complete(script, "pushy", "admin", "user", "add") == ["add-to-org"]
    assert complete(script, "pushy", "co") == ["completion"]
    for shell in ("zsh", "fish"):
        r = pushy("completion", shell)
        assert r.returncode == 0 and "job" in r.stdout and "--no-color" in r.stdout, shell
    assert pushy("completion", "tcsh").returncode == 2


def test_sigterm_exits_0(server):
    assert server.stop() == 0
    assert "pushy server stopped" in server.log()


def test_demo_runs_a_job_on_every_node():
    r = pushy("demo", "--nodes", "2", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "hello from node1" in r.stdout and "hello from node2" in r.stdout
    assert "demo finished: OK" in r.stdout


def test_port_in_use_is_one_clear_line_and_exits_1(server, tmp_path):
    """A second server on the same ports: one error line naming the address, no traceback."""
    config = tmp_path / "same-ports.toml"
    config.write_text(
        'api_listen_address = "127.0.0.1"\nzeromq_listen_address = "tcp://127.0.0.1"\n'
        + "".join(
            f"{name} = {server.ports[name]}\n"
            for name in ("api_port", "command_port", "server_heartbeat_port")
        )
    )
    r = pushy("server", "--config", str(config), "--state-dir", str(tmp_path / "second"))
    assert r.returncode == 1, r.stderr
    assert "cannot start:" in r.stderr and "Address already in use" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
