"""A real PostgreSQL for the tests and ``pushy bench``: Debian's server binaries, a cluster in a
temp dir.

PostgreSQL refuses to run as root, so as root the cluster's directory belongs to the
``postgres`` user and every server command runs as that user (``runuser``); as anyone else it
runs as that user. It listens on 127.0.0.1 (or the address given) on a free port, with its
socket in its own directory, and trusts local connections (the tests own the machine). The
binaries come from ``/usr/lib/postgresql/N/bin`` (``scripts/test`` installs the package when
missing).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PG_USER = "postgres"


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version)
    if not found:
        raise RuntimeError(
            "PostgreSQL's server binaries are not installed (/usr/lib/postgresql/N/bin): "
            "apt-get install postgresql (scripts/test does it)"
        )
    return Path(found[-1]).parent


def _version(path: str) -> int:
    try:
        return int(Path(path).parts[-3])
    except ValueError:
        return 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class PgCluster:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.bin = pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="pushy-pg-"))
        self.data = self.root / "data"
        self.as_root = os.geteuid() == 0
        if self.as_root:
            pw = pwd.getpwnam(PG_USER)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        os.chmod(self.root, 0o755)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", PG_USER, "-E", "UTF8")

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bin / tool), *args]
        if self.as_root:
            command = ["runuser", "-u", PG_USER, "--", *command]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stderr or proc.stdout}")
        return proc

    def start(self) -> PgCluster:
        options = f"-p {self.port} -k {self.root} -c listen_addresses={self.host} -c fsync=on"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-w",
            "-o",
            options,
            "start",
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (clean), ``immediate`` (as if killed: recovery at the next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def createdb(self, name: str) -> str:
        self._run("createdb", "-h", self.host, "-p", str(self.port), "-U", PG_USER, name)
        return self.url(name)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@{self.host}:{self.port}/{db}"

    def log(self) -> str:
        try:
            return (self.root / "log").read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
