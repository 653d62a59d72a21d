"""The salt side of ``pushy bench salt``: a salt master and M minions on 127.0.0.1 (each its own
process group, root dir, keys and sockets), timed through the ``salt`` CLI and ``LocalClient``."""

from __future__ import annotations

import getpass
import json
import socket
import time
from pathlib import Path
from typing import Any

from appliance.bench.daemons import Group, free_port, stop_groups, timed, wait_until
from appliance.bench.procstat import group_pss_mib

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
