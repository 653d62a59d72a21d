"""Without libpq (a node, a minimal host: the packages only recommend libpq5), psycopg cannot be
imported, and nothing but a PostgreSQL store may need it: the CLI, the client and a file-store
server run as before, and a PostgreSQL store says what is missing. (The chroot round-trip of
the packages found `pushy --version` failing there: the bench's parser imported psycopg.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import REPO, Server

BLOCK = "import sys\nsys.modules['psycopg'] = None  # as when libpq is missing: ImportError\n"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCK)
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path / "block"), str(REPO)])}


def pushy(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **env},
        timeout=120,
    )


def test_the_blocker_blocks(env):
    r = pushy(env, "admin", "migrate-store", "--to", "postgresql://x@127.0.0.1:1/y")
    assert r.returncode == 100 and "libpq" in r.stderr, r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("--version",),
        ("--help",),
        ("bench", "--help"),
        ("bench", "store", "--help"),
        ("client", "-v"),
    ],
)
def test_the_commands_run_without_psycopg(env, args):
    r = pushy(env, *args)
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_file_store_server_runs_and_a_postgresql_one_says_what_is_missing(env, tmp_path):
    with Server(tmp_path / "state", env=env) as server:
        r = httpx.get(f"{server.url}/pushy/_status", timeout=10)
        assert r.status_code == 200 and r.json()["role"] == "active"
    config = tmp_path / "pg.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "pgstate"}"\nstore = "postgresql://x@127.0.0.1:1/y"\n'
        'api_listen_address = "127.0.0.1"\napi_port = 0\n'
    )
    r = pushy(env, "server", "--config", str(config))
    assert r.returncode == 1, r.stderr[-2000:]
    assert "needs PostgreSQL's client library, libpq" in r.stderr, r.stderr[-2000:]
