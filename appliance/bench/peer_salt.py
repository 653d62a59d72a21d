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
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.bench import report
from appliance.bench.pushyside import run_pushy
from appliance.bench.saltside import run_salt
from appliance.bench.saltvenv import (
    ENV_SALT_VENV,
    SALT_VERSION,
    default_salt_venv,
    salt_unavailable_reason,
    salt_version,
    setup_salt_venv,
)

SCENARIO = "salt"

__all__ = [
    "SALT_VERSION",
    "SCENARIO",
    "add_arguments",
    "default_salt_venv",
    "run",
    "salt_unavailable_reason",
    "setup_salt_venv",
]


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
    params["salt_version"] = salt_version(venv)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pushy bench salt", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
