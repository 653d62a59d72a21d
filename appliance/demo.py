"""``pushy demo``: a local server with its default state, a few real clients, one real job.

It starts ``pushy server`` on 127.0.0.1 (free ports, a fresh state directory), creates an org
and one client (key pair) per node with signed requests, starts one ``pushy client`` process
per node from a config file in the push-jobs cookbook's format, runs a whitelisted command on
every node with output capture, and prints the job and each node's output.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from appliance.client.bootstrap import write_node_dir
from appliance.localserver import LocalServer, pushy_command
from appliance.signedhttp import signed_request

WHITELIST = {"hello": "echo hello from $CHEF_PUSH_NODE_NAME; uname -sr"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo",
        help="run a local server, three clients and one job, then stop",
        description="Start a throw-away server on 127.0.0.1 with node agents and run a job.",
    )
    demo.add_argument("--nodes", type=int, default=3, help="number of client processes (default 3)")
    demo.add_argument("--keep", action="store_true", help="keep the state directory")


def _start_client(root: Path, url: str, name: str, key_pem: str) -> subprocess.Popen:
    """A real ``pushy client`` with a config file in the push-jobs cookbook's format."""
    config = write_node_dir(
        root,
        name,
        chef_server_url=f"{url}/organizations/demo",
        key_pem=key_pem,
        whitelist=WHITELIST,
    )
    log = open(config.parent / "client.log", "wb")
    return subprocess.Popen(
        [*pushy_command(), "client", "-c", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def run_demo(args: argparse.Namespace) -> int:
    state_root = Path(tempfile.mkdtemp(prefix="pushy-demo-"))
    server = LocalServer(state_root / "state")
    print(f"starting pushy server (state in {server.state_dir}, log in {server.log_path})")
    clients: list[subprocess.Popen] = []
    try:
        try:
            server.start()
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 1
        url = server.url
        pivotal = server.pivotal_key.read_text()
        print(f"server ready at {url}; superuser key {server.pivotal_key}")
        status, _ = signed_request(
            url, "POST", "/organizations", {"name": "demo", "full_name": "Demo"}, "pivotal", pivotal
        )
        print(f"created org 'demo' ({status})")
        names = [f"node{i}" for i in range(1, args.nodes + 1)]
        for name in names:
            status, body = signed_request(
                url,
                "POST",
                "/organizations/demo/clients",
                {"name": name, "create_key": True},
                "pivotal",
                pivotal,
            )
            clients.append(_start_client(state_root, url, name, body["chef_key"]["private_key"]))
        print(f"started {len(clients)} 'pushy client' processes: {', '.join(names)}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            _, states = signed_request(
                url, "GET", "/organizations/demo/pushy/node_states", None, "pivotal", pivotal
            )
            if sum(s["availability"] == "available" for s in states) == len(names):
                break
            time.sleep(0.2)
        print("node states: " + ", ".join(f"{s['node_name']}={s['availability']}" for s in states))
        job_body = {"command": "hello", "nodes": names, "capture_output": True}
        status, created = signed_request(
            url, "POST", "/organizations/demo/pushy/jobs", job_body, "pivotal", pivotal
        )
        if status != 201:
            print(f"job creation failed: {status} {created}", file=sys.stderr)
            return 1
        job_id = created["id"]
        print(f"started job {job_id}: 'hello' on {len(names)} nodes")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _, job = signed_request(
                url, "GET", f"/organizations/demo/pushy/jobs/{job_id}", None, "pivotal", pivotal
            )
            if job["status"] not in ("new", "voting", "running"):
                break
            time.sleep(0.2)
        print(f"job {job_id}: {job['status']}, nodes {json.dumps(job['nodes'])}")
        for name in names:
            _, out = signed_request(
                url,
                "GET",
                f"/organizations/demo/pushy/jobs/{job_id}/output/{name}/stdout",
                None,
                "pivotal",
                pivotal,
                accept="application/octet-stream",
            )
            print(f"  {name} stdout: {out.strip() if isinstance(out, str) else out}")
        ok = job["status"] == "complete" and set(job["nodes"]) == {"succeeded"}
        print("demo finished: " + ("OK" if ok else "the job did not succeed everywhere"))
        return 0 if ok else 1
    finally:
        for client in clients:
            client.send_signal(signal.SIGTERM)
        for client in clients:
            try:
                client.wait(20)
            except subprocess.TimeoutExpired:
                client.kill()
        if server.proc is not None and server.proc.poll() is None:
            try:
                server.stop(20)
            except subprocess.TimeoutExpired:
                pass  # stop() killed it
        if not args.keep:
            shutil.rmtree(state_root, ignore_errors=True)
