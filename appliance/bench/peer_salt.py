"""``pushy bench salt``: SaltStack's ``salt '*' cmd.run true`` beside a pushy ``true`` job.

Same machine, same run, same M: a salt master with M minions (each its own process tree, root
dir, keys and sockets under one temporary directory, on 127.0.0.1) and then a pushy server with
M real ``pushy client`` processes. Each side is timed twice, R times each, median reported:

- ``cli``: the operator's command from start to exit, ``salt '*' cmd.run true`` against
  ``pushy job start true NODE...`` (both wait for every node's result; both pay their CLI's
  Python start-up);
- ``api``: inside a running client, ``LocalClient.cmd('*', 'cmd.run', ['true'])`` against
  POST /pushy/jobs followed by the job's event feed up to ``job_complete``.

Salt runs from its own virtualenv (``.venv-salt`` at the top of the checkout, or
``--salt-venv``/``$PUSHY_SALT_VENV``), made by ``--setup``: ``pip install salt==SALT_VERSION``.
Why that pin: the newest salt on the registry reachable here (3008.5, and 3007.17) requires
``certifi>=2026.10.23``, which the registry does not have, so a plain ``pip install salt``
backtracks to 3008.4 anyway; pinning says so. Without a working salt venv the scenario prints
why, writes a "not available" result and exits 0.

Every daemon is started in a session of its own and stopped by process group (SIGTERM, then
SIGKILL), on every exit path; the group leaders also get SIGTERM if this process dies.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import getpass
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from appliance.bench import report
from appliance.client.bootstrap import write_node_dir
from appliance.core.keys import load_private_pem
from appliance.localserver import LocalServer, pushy_command
from appliance.signedhttp import Stream, open_stream, send, signed_request
from appliance.sse import SseParser

SCENARIO = "salt"
SALT_VERSION = "3008.4"
ENV_SALT_VENV = "PUSHY_SALT_VENV"
ORG = "bench"
WHITELIST = {"true": "true"}
STOP_SECONDS = 15.0

__all__ = [
    "SALT_VERSION",
    "SCENARIO",
    "add_arguments",
    "default_salt_venv",
    "run",
    "salt_unavailable_reason",
    "setup_salt_venv",
]

MASTER_CONFIG = """\
root_dir: {root}
interface: 127.0.0.1
publish_port: {publish_port}
ret_port: {ret_port}
user: {user}
auto_accept: True
log_level_logfile: warning
enable_fqdns_grains: False
file_roots:
  base:
    - {root}/srv
"""

MINION_CONFIG = """\
root_dir: {root}
id: {minion_id}
master: 127.0.0.1
master_port: {ret_port}
user: {user}
acceptance_wait_time: 1
random_reauth_delay: 0
enable_fqdns_grains: False
log_level_logfile: warning
"""

# Runs under the salt venv's Python: wait for M minions, or time R LocalClient.cmd calls.
SALT_HELPER = r"""
import json, sys, time
import salt.client, salt.config
conf, mode, m, r, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
client = salt.client.LocalClient(mopts=salt.config.client_config(conf))
if mode == "wait":
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        seen = len(client.cmd("*", "test.ping", timeout=5))
        if seen >= m:
            break
        time.sleep(0.5)
    warm = client.cmd("*", "cmd.run", ["true"], timeout=timeout)
    print(json.dumps({"minions": seen, "warm": len(warm)}))
else:
    runs = []
    for _ in range(r):
        t0 = time.perf_counter()
        ret = client.cmd("*", "cmd.run", ["true"], timeout=timeout)
        runs.append({"seconds": time.perf_counter() - t0, "returns": len(ret),
                     "ok": sum(v == "" for v in ret.values())})
    print(json.dumps(runs))
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--minions", type=int, default=20, metavar="M", help="salt minions = pushy clients (20)"
    )
    parser.add_argument(
        "--repeat", type=int, default=5, metavar="R", help="timed runs per measure (5)"
    )
    parser.add_argument(
        "--salt-venv",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"salt's virtualenv (${ENV_SALT_VENV}, else .venv-salt in the checkout)",
    )
    parser.add_argument(
        "--setup",
        action="store_true",
        help=f"create the salt venv first if needed (pip install salt=={SALT_VERSION})",
    )
    parser.add_argument(
        "--job-timeout", type=float, default=60.0, help="seconds one job may take (60)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")


def default_salt_venv() -> Path:
    env = os.environ.get(ENV_SALT_VENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / ".venv-salt"


def salt_unavailable_reason(venv: Path) -> str | None:
    """None when ``venv`` runs salt (master, minion, CLI); else why not, in one line."""
    python = venv / "bin" / "python"
    if not python.exists():
        return f"no salt virtualenv at {venv} (make it with: pushy bench salt --setup)"
    for tool in ("salt", "salt-master", "salt-minion"):
        if not (venv / "bin" / tool).exists():
            return f"{venv}/bin/{tool} is missing (pip install salt=={SALT_VERSION} into {venv})"
    try:
        out = subprocess.run(
            [
                str(python),
                "-c",
                "import salt.client, salt.version; print(salt.version.__version__)",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run {python}: {exc}"
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"salt does not import in {venv}: {tail}"
    return None


def setup_salt_venv(venv: Path) -> str | None:
    """Create ``venv`` with salt; None on success, else the error (pip's last lines)."""
    steps = [
        [
            sys.executable if not getattr(sys, "frozen", False) else "python3",
            "-m",
            "venv",
            str(venv),
        ],
        [str(venv / "bin" / "pip"), "install", "-q", f"salt=={SALT_VERSION}"],
    ]
    if (venv / "bin" / "python").exists():
        steps = steps[1:]
    for command in steps:
        print("+ " + " ".join(command), flush=True)
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{command[0]}: {exc}"
        if out.returncode != 0:
            lines = [ln for ln in out.stderr.splitlines() if not ln.startswith("WARNING")]
            return " | ".join(lines[-3:]) or f"exit {out.returncode}"
    return None


# ---------------------------------------------------------------------------------------------
# process groups


def _die_with_parent() -> None:
    """In the child before exec: a new session, and SIGTERM when this benchmark dies."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Group:
    """A daemon started as the leader of its own process group (salt forks: the group is
    what must end)."""

    def __init__(self, name: str, command: list[str], log_path: Path, **popen: Any) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (no threads here)
                **popen,
            )
        self.pgid = self.proc.pid

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    def alive(self) -> bool:
        self.proc.poll()
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def stop_groups(groups: list[Group], seconds: float = STOP_SECONDS) -> None:
    """SIGTERM every group, wait (bounded), SIGKILL what is left, reap the leaders."""
    for group in groups:
        group.signal(signal.SIGTERM)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(g.alive() for g in groups):
        time.sleep(0.1)
    for group in groups:
        if group.alive():
            group.signal(signal.SIGKILL)
    for group in groups:
        with contextlib.suppress(subprocess.TimeoutExpired):
            group.proc.wait(5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(g.alive() for g in groups):
        time.sleep(0.05)


def group_pss_mib(pgids: set[int]) -> float:
    """Summed PSS of every process in these process groups, from /proc (RSS where the kernel
    has no smaps_rollup): forked workers share pages, which RSS would count once per process."""
    total_kib = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[2]) in pgids:  # pgrp
                total_kib += _pss_kib(entry)
        except (OSError, ValueError, IndexError):
            continue
    return total_kib / 1024


def _pss_kib(proc_dir: Path) -> int:
    try:
        for line in (proc_dir / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return int((proc_dir / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], seconds: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise RuntimeError(f"{what}: not within {seconds:.0f} s")


def timed(
    command: list[str], timeout: float, **kw: Any
) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kw)
    return time.perf_counter() - t0, out


# ---------------------------------------------------------------------------------------------
# salt side


def run_salt(venv: Path, root: Path, m: int, r: int, job_timeout: float) -> dict[str, Any]:
    user = getpass.getuser()
    ports = {"publish_port": free_port(), "ret_port": free_port()}
    master_dir = root / "master"
    (master_dir / "srv").mkdir(parents=True)
    (master_dir / "master").write_text(MASTER_CONFIG.format(root=master_dir, user=user, **ports))
    bin_dir = venv / "bin"
    groups: list[Group] = []
    try:
        t_start = time.perf_counter()
        master = Group(
            "salt-master",
            [str(bin_dir / "salt-master"), "-c", str(master_dir), "-l", "warning"],
            root / "master.log",
        )
        groups.append(master)

        def master_up() -> bool:
            if master.proc.poll() is not None:
                raise RuntimeError(f"salt-master exited:\n{master.log()}")
            with socket.socket() as s:
                s.settimeout(0.5)
                return s.connect_ex(("127.0.0.1", ports["ret_port"])) == 0

        wait_until(master_up, 60, "salt-master listening")
        for i in range(1, m + 1):
            name = f"minion{i:03d}"
            mdir = root / name
            mdir.mkdir()
            (mdir / "minion").write_text(
                MINION_CONFIG.format(root=mdir, minion_id=name, user=user, **ports)
            )
            groups.append(
                Group(
                    name,
                    [str(bin_dir / "salt-minion"), "-c", str(mdir), "-l", "warning"],
                    root / f"{name}.log",
                )
            )
        helper = [str(bin_dir / "python"), "-c", SALT_HELPER, str(master_dir / "master")]
        wait_s = 60 + 3 * m
        _, out = timed([*helper, "wait", str(m), "0", str(wait_s)], wait_s + 60)
        ready = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {}
        if ready.get("minions", 0) < m:
            dead = [g.name for g in groups if g.proc.poll() is not None]
            raise RuntimeError(
                f"only {ready.get('minions', 0)} of {m} minions answered (exited: {dead}); "
                f"{out.stderr[-2000:]}\n{master.log()}"
            )
        ready_s = time.perf_counter() - t_start
        pss = group_pss_mib({g.pgid for g in groups})
        cli = []
        for _ in range(r):
            # '"true"': the salt CLI reads each argument as YAML (bare true is a boolean)
            seconds, out = timed(
                [
                    str(bin_dir / "salt"),
                    "-c",
                    str(master_dir),
                    "*",
                    "cmd.run",
                    '"true"',
                    "--out=json",
                    "--static",
                    "-t",
                    str(int(job_timeout)),
                ],
                job_timeout + 60,
            )
            returns = json.loads(out.stdout) if out.stdout.strip() else {}
            ok = sum(v == "" for v in returns.values())
            cli.append(
                {"seconds": seconds, "returns": len(returns), "ok": ok, "rc": out.returncode}
            )
        _, out = timed([*helper, "time", str(m), str(r), str(job_timeout)], r * job_timeout + 60)
        if out.returncode != 0:
            raise RuntimeError(f"salt LocalClient timing failed: {out.stderr[-2000:]}")
        api = json.loads(out.stdout.strip().splitlines()[-1])
        return {"ready_seconds": ready_s, "idle_pss_mib": pss, "cli": cli, "api": api}
    finally:
        stop_groups(groups)


# ---------------------------------------------------------------------------------------------
# pushy side


def _job_through_feed(url: str, key: Any, names: list[str], timeout: float) -> dict[str, Any]:
    """POST a ``true`` job and read its event feed to ``job_complete``; then check the job."""
    jobs = f"/organizations/{ORG}/pushy/jobs"
    body = json.dumps({"command": "true", "nodes": names}).encode()
    t0 = time.perf_counter()
    reply = send(url, "POST", jobs, body, "pivotal", key, timeout=timeout)
    if reply.status != 201:
        raise RuntimeError(f"POST {jobs}: {reply.status} {reply.body()}")
    job_id = reply.body()["id"]
    feed = open_stream(
        url, f"/organizations/{ORG}/pushy/job_status_feed/{job_id}", "pivotal", key, timeout=timeout
    )
    if not isinstance(feed, Stream):
        raise RuntimeError(f"job feed: {feed.status} {feed.body()}")
    deadline = time.monotonic() + timeout
    with feed:
        for event in feed.events(SseParser()):
            if event.event in ("job_complete", "summary") or time.monotonic() >= deadline:
                break
    seconds = time.perf_counter() - t0
    job = send(url, "GET", f"{jobs}/{job_id}", b"", "pivotal", key, timeout=timeout).body()
    ok = len(job.get("nodes", {}).get("succeeded", []))
    return {"seconds": seconds, "status": job.get("status"), "ok": ok}


def run_pushy(root: Path, m: int, r: int, job_timeout: float) -> dict[str, Any]:
    root.mkdir(parents=True)
    server = LocalServer(root / "state")
    groups: list[Group] = []
    try:
        t_start = time.perf_counter()
        server.start()
        url = server.url
        pivotal = server.pivotal_key.read_text()
        key = load_private_pem(pivotal)
        status, body = signed_request(
            url, "POST", "/organizations", {"name": ORG, "full_name": ORG}, "pivotal", pivotal
        )
        if status != 201:
            raise RuntimeError(f"creating org: {status} {body}")
        names = [f"node{i:03d}" for i in range(1, m + 1)]
        for name in names:
            status, body = signed_request(
                url,
                "POST",
                f"/organizations/{ORG}/clients",
                {"name": name, "create_key": True},
                "pivotal",
                pivotal,
            )
            if status != 201:
                raise RuntimeError(f"creating client {name}: {status} {body}")
            config = write_node_dir(
                root,
                name,
                chef_server_url=f"{url}/organizations/{ORG}",
                key_pem=body["chef_key"]["private_key"],
                whitelist=WHITELIST,
            )
            groups.append(
                Group(name, [*pushy_command(), "client", "-c", str(config)], root / f"{name}.log")
            )

        def all_available() -> bool:
            dead = [g.name for g in groups if g.proc.poll() is not None]
            if dead:
                raise RuntimeError(f"pushy clients exited: {dead}\n{groups[0].log()}")
            _, states = signed_request(
                url, "GET", f"/organizations/{ORG}/pushy/node_states", None, "pivotal", pivotal
            )
            return sum(s.get("availability") == "available" for s in states) >= m

        wait_until(all_available, 60 + 3 * m, f"{m} pushy clients available", step=0.2)
        ready_s = time.perf_counter() - t_start
        assert server.proc is not None
        pss = (
            group_pss_mib({g.pgid for g in groups})
            + _pss_kib(Path(f"/proc/{server.proc.pid}")) / 1024
        )
        _job_through_feed(url, key, names, job_timeout)  # warm-up, as on the salt side
        cli = []
        for _ in range(r):
            seconds, out = timed(
                [
                    *pushy_command(),
                    "job",
                    "start",
                    "true",
                    *names,
                    "--server-url",
                    f"{url}/organizations/{ORG}",
                    "-u",
                    "pivotal",
                    "-k",
                    str(server.pivotal_key),
                    "--exit-strict",
                ],
                job_timeout + 60,
            )
            cli.append(
                {"seconds": seconds, "rc": out.returncode, "ok": m if out.returncode == 0 else 0}
            )
        api = [_job_through_feed(url, key, names, job_timeout) for _ in range(r)]
        return {"ready_seconds": ready_s, "idle_pss_mib": pss, "cli": cli, "api": api}
    finally:
        stop_groups(groups)
        if server.proc is not None and server.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.stop(STOP_SECONDS)


# ---------------------------------------------------------------------------------------------
# the scenario


def _median(runs: list[dict[str, Any]]) -> float | None:
    values = [run["seconds"] for run in runs]
    return statistics.median(values) if values else None


def _all_ok(runs: list[dict[str, Any]], m: int) -> bool:
    return bool(runs) and all(run.get("ok") == m for run in runs)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM to this process unwinds through the ``finally`` blocks that stop the daemons."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    m, r = max(1, args.minions), max(1, args.repeat)
    venv = Path(args.salt_venv) if args.salt_venv else default_salt_venv()
    params = {"minions": m, "repeat": r, "salt_venv": str(venv), "job_timeout": args.job_timeout}
    reason = salt_unavailable_reason(venv)
    if reason is not None and args.setup:
        error = setup_salt_venv(venv)
        reason = salt_unavailable_reason(venv) if error is None else f"setup failed: {error}"
    if reason is not None:
        print(f"salt: not available: {reason}")
        path = report.write(SCENARIO, params, {"available": False, "reason": reason})
        print(f"wrote {path}")
        return 0
    params["salt_version"] = _salt_version(venv)
    root = Path(tempfile.mkdtemp(prefix="pushy-salt-", dir="/tmp"))  # short: unix socket paths
    try:
        with _sigterm_as_exit():
            print(f"salt {params['salt_version']}: master + {m} minions (in {root})", flush=True)
            salt = run_salt(venv, root / "salt", m, r, args.job_timeout)
            print(f"pushy: server + {m} clients", flush=True)
            ours = run_pushy(root / "pushy", m, r, args.job_timeout)
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
        print(f"salt bench failed: {exc}", file=sys.stderr)
        path = report.write(SCENARIO, params, {"available": True, "error": str(exc)})
        print(f"wrote {path}")
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    results = _summary(salt, ours, m)
    print(_table(results))
    path = report.write(SCENARIO, params, results)
    print(f"wrote {path}")
    return 0 if results["all_ok"] else 1


def _summary(salt: dict[str, Any], ours: dict[str, Any], m: int) -> dict[str, Any]:
    out: dict[str, Any] = {"available": True, "salt": salt, "pushy": ours}
    for measure in ("cli", "api"):
        s, p = _median(salt[measure]), _median(ours[measure])
        out[f"{measure}_median_seconds"] = {"salt": s, "pushy": p}
        out[f"{measure}_ratio_salt_over_pushy"] = s / p if s and p else None
    out["salt_all_ok"] = all(_all_ok(salt[k], m) for k in ("cli", "api"))
    out["pushy_all_ok"] = all(_all_ok(ours[k], m) for k in ("cli", "api"))
    out["all_ok"] = out["salt_all_ok"] and out["pushy_all_ok"]
    return out


def _table(results: dict[str, Any]) -> str:
    salt, ours = results["salt"], results["pushy"]
    rows: list[list[Any]] = [["measure", "salt s", "pushy s", "salt/pushy"]]
    labels = {
        "cli": "CLI to all returns (median)",
        "api": "API call to all returns (median)",
    }
    for measure, label in labels.items():
        medians = results[f"{measure}_median_seconds"]
        rows.append(
            [label, medians["salt"], medians["pushy"], results[f"{measure}_ratio_salt_over_pushy"]]
        )
    rows.append(["fleet ready after start", salt["ready_seconds"], ours["ready_seconds"], None])
    rows.append(["idle PSS, MiB (all processes)", salt["idle_pss_mib"], ours["idle_pss_mib"], None])
    ok = {True: "every node ok in every run", False: "SOME RUNS MISSED NODES (see JSON)"}
    notes = f"salt: {ok[results['salt_all_ok']]}; pushy: {ok[results['pushy_all_ok']]}"
    return report.table(rows) + "\n" + notes


def _salt_version(venv: Path) -> str | None:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import salt.version as v; print(v.__version__)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pushy bench salt", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
