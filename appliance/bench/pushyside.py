"""The pushy side of ``pushy bench salt``: a local pushy server and M real ``pushy client``
processes, timed through ``pushy job start`` and through POST /pushy/jobs plus the job's feed."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from appliance.bench.daemons import STOP_SECONDS, Group, stop_groups, timed, wait_until
from appliance.bench.procstat import group_pss_mib, pss_kib
from appliance.client.bootstrap import write_node_dir
from appliance.core.keys import load_private_pem
from appliance.localserver import LocalServer, pushy_command
from appliance.signedhttp import Stream, open_stream, send, signed_request
from appliance.sse import SseParser

ORG = "bench"
WHITELIST = {"true": "true"}


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
            + pss_kib(Path(f"/proc/{server.proc.pid}")) / 1024
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
