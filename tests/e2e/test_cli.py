"""The ``pushy`` command line: settings errors, --version, raw requests, the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


def test_raw_request_signs_as_the_superuser(server):
    env = {"PUSHY_SERVER_URL": server.url, "PUSHY_KEY": str(server.pivotal_key)}
    r = pushy(
        "raw",
        "-m",
        "POST",
        "/organizations",
        "-d",
        '{"name": "rawco", "full_name": "Raw"}',
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["clientname"] == "rawco-validator"
    r = pushy("raw", "/organizations/nosuch/pushy/jobs", env=env)
    assert r.returncode == 1 and "404" in r.stderr
    r = pushy("raw", "/pushy/_status", env={**env, "PUSHY_SERVER_URL": "http://127.0.0.1:9"})
    assert r.returncode == 3


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
