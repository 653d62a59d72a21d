"""The server's own edges, started before it loads its state.

An edge is a Python process that imports trio and libzmq before it can do anything: about a
third of a second of CPU. Started after the replay it delayed every start by that much (a
cold start from a snapshot took 1.06 s, a fifth of it the edges); started first, from the
command line's settings alone, it runs on the other core while the server imports its web
stack and replays its log. All it needs is where the link listens and its keys: the link's
listening socket is bound here, and libzmq takes it over once the server runs
(``server.edges.EdgeHub``). Connections that arrive meanwhile wait in its backlog.

Meanwhile the early edges share one processor (`start_early` pins them, `adopt` frees them):
two edges importing beside the server on two cores took a seventh of its start (a cold start
from a snapshot 1.03 s with them, 0.87 s alone); one after the other on one core they are
still ready before it.

Light on purpose (no trio, no web stack): ``pushy server`` imports it before anything heavy.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from appliance import reuseport
from appliance.core.settings import Settings, bind_host

log = logging.getLogger("pushy.edges")
LINK_KEY_FILE = "edge-link.key"  # the link's CURVE key pair (z85 public, newline, z85 secret)
ENV_LINK = "PUSHY_EDGE_LINK"  # local edges: "COORDINATOR_PUBLIC EDGE_PUBLIC EDGE_SECRET PID"


def link_keypair(state_dir: Path) -> tuple[str, str]:
    """The link's CURVE key pair, made the first time it is needed and kept (0600, written to a
    temporary file and renamed, so a full disk never leaves half a key). When it cannot be
    kept (a read-only state directory) this run uses a fresh pair: the server's own edges do
    not need it, only edges on other hosts do (they hold its public half)."""
    path = state_dir / LINK_KEY_FILE
    try:
        public, secret = path.read_text().split()
        if len(public) == len(secret) == 40:
            return public, secret
        log.warning("%s is damaged: making a new link key pair", path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s (%s): making a new link key pair", path, exc)
    pub, sec = zmq.curve_keypair()
    public, secret = pub.decode("ascii"), sec.decode("ascii")
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{public}\n{secret}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        log.warning(
            "cannot keep the edge link key in %s (%s): edges on other hosts cannot join "
            "until it can be written",
            path,
            exc,
        )
        try:
            tmp.unlink()
        except OSError:
            pass
    return public, secret


@dataclass
class LocalLink:
    """The link as the local edges see it, and the edges started on it ahead of the server."""

    listener: socket.socket  # listening; handed to libzmq (ZMQ_USE_FD) by the server
    url: str  # where local edges reach it
    public: str  # the link's key pair
    secret: str
    local_public: str  # the local edges' key pair (one per server run)
    local_secret: str
    command: list[str]  # how to start an edge: [*pushy_command(), "edge"]
    log_level: str
    log_format: str
    early: dict[int, subprocess.Popen] = field(default_factory=dict)  # by index, not adopted
    cpus: set[int] | None = None  # the server's processors, while the early edges share one

    @classmethod
    def open(cls, settings: Settings, state_dir: Path, command: Sequence[str]) -> LocalLink:
        """Bind the link's listener and read (or make) its keys. Raises OSError."""
        public, secret = link_keypair(state_dir)
        host = bind_host(settings.edge_link_address)
        listening = reuseport.listener(host, settings.edge_link_port, share=False)
        port = listening.getsockname()[1]
        if host in ("0.0.0.0", "::"):  # local edges reach the link where it listens
            host = "127.0.0.1"
        local_public, local_secret = (k.decode() for k in zmq.curve_keypair())
        return cls(
            listening,
            f"tcp://{_bracket(host)}:{port}",
            public,
            secret,
            local_public,
            local_secret,
            list(command),
            settings.log_level,
            settings.log_format,
        )

    def argv(self, index: int) -> list[str]:
        name = f"local-{index}"
        return [*self.command, "--coordinator", self.url, "--name", name, "--local"] + [
            "--log-level",
            self.log_level,
            "--log-format",
            self.log_format,
        ]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env[ENV_LINK] = f"{self.public} {self.local_public} {self.local_secret} {os.getpid()}"
        return env

    def start_early(self, count: int) -> None:
        """Start local edges 0..count-1 now, on one processor; the server adopts them."""
        env = self.env()
        cpus = os.sched_getaffinity(0)
        shared = {max(cpus)} if len(cpus) > 1 else None
        for index in range(count):
            try:
                proc = subprocess.Popen(self.argv(index), env=env, stdin=subprocess.DEVNULL)
            except OSError as exc:  # the supervisor starts it later, and says why if it fails
                log.debug("could not start edge %d early: %s", index, exc)
                return
            self.early[index] = proc
            if shared is not None:
                _set_cpus(proc.pid, shared)
                self.cpus = cpus

    def adopt(self, index: int) -> subprocess.Popen | None:
        """Edge ``index`` if it was started early: from now on on every processor again."""
        proc = self.early.pop(index, None)
        if proc is not None and self.cpus is not None:
            _set_cpus(proc.pid, self.cpus)
        return proc

    def close(self) -> None:
        """The server did not get as far as adopting them: stop the early edges."""
        for proc in self.early.values():
            proc.kill()
            proc.wait()
        self.early.clear()
        self.listener.close()


def _set_cpus(pid: int, cpus: set[int]) -> None:
    try:
        os.sched_setaffinity(pid, cpus)
    except OSError as exc:  # it already exited (its supervisor says why), or a cgroup refuses
        log.debug("edge process %d: cannot set its processors to %s: %s", pid, cpus, exc)


def start_local_link(settings: Settings, command: Sequence[str]) -> LocalLink | None:
    """The link and the local edges, started before the state is loaded; None when it cannot
    be done now (single-process mode, a first start, a link that cannot be bound): the server
    then does it all itself once it runs, and reports what fails."""
    state_dir = Path(settings.state_dir)
    if settings.edge_processes == 0 or not (state_dir / LINK_KEY_FILE).is_file():
        return None
    try:
        link = LocalLink.open(settings, state_dir, command)
    except OSError as exc:
        log.debug("edges not started early: %s", exc)
        return None
    # the least the server will run: "auto" only adds edges for the nodes it knows (``edge_count``)
    link.start_early(settings.edge_count(os.cpu_count(), 0, 0))
    return link


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
