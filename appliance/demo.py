"""``pushy demo``: a local server with its default state, a few node agents, one real job.

It starts ``pushy server`` on 127.0.0.1 (free ports, a fresh state directory), creates an org
and one client per node with signed requests, starts the node agents, runs a whitelisted
command on every node with output capture, follows the job's SSE feed and prints each node's
output. The agents here are minimal protocol agents (config fetch, CURVE, HMAC-signed
heartbeats, commit/run/abort) so the demo needs nothing but this package.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import zmq

from appliance.core import wire
from appliance.core.keys import decrypt_session_key, load_private_pem
from appliance.localserver import LocalServer
from appliance.rawrequest import signed_request

WHITELIST = {"hello": "echo hello from $CHEF_PUSH_NODE_NAME; uname -sr"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo",
        help="run a local server, three node agents and one job, then stop",
        description="Start a throw-away server on 127.0.0.1 with node agents and run a job.",
    )
    demo.add_argument("--nodes", type=int, default=3, help="number of node agents (default 3)")
    demo.add_argument("--keep", action="store_true", help="keep the state directory")


class Agent(threading.Thread):
    """A minimal node agent: enough of the client protocol to run whitelisted commands."""

    def __init__(self, url: str, org: str, name: str, key_pem: str, ctx: zmq.Context) -> None:
        super().__init__(name=f"agent-{name}", daemon=True)
        self.url, self.org, self.name = url, org, name
        self.key_pem = key_pem
        self.ctx = ctx
        self.stop_event = threading.Event()
        self.job: tuple[str, str] | None = None  # (job id, command line)
        self.state = "idle"
        self.sequence = 0

    def run(self) -> None:
        public, secret = zmq.curve_keypair()
        ccpk = urllib.parse.quote_plus(public.decode())
        path = f"/organizations/{self.org}/pushy/config/{self.name}?ccpk={ccpk}&version=2.0"
        status, config = signed_request(self.url, "GET", path, None, self.name, self.key_pem)
        if status != 200:
            print(f"  {self.name}: config fetch failed: {status} {config}", file=sys.stderr)
            return
        self.key = decrypt_session_key(
            load_private_pem(self.key_pem), config["encoded_session_key"]["key"]
        )
        hb = config["push_jobs"]["heartbeat"]
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.linger, dealer.sndhwm = 0, 3
        dealer.curve_serverkey = config["curve_public_key"].encode()
        dealer.curve_publickey, dealer.curve_secretkey = public, secret
        dealer.connect(hb["command_addr"])
        self.dealer = dealer
        self.incarnation = str(uuid.uuid4())
        interval = float(hb["interval"])
        next_beat = 0.0
        try:
            while not self.stop_event.is_set():
                now = time.monotonic()
                if now >= next_beat:
                    self.send("heartbeat", job_state=self.state)
                    next_beat = now + interval
                if dealer.poll(int(max(0.0, next_beat - now) * 1000) + 1):
                    header, body = dealer.recv_multipart()
                    msg = wire.check_client_inbound(
                        header,
                        body,
                        session_key=self.key,
                        server_public_key=None,
                        now=time.time(),
                        max_skew=300,
                    )
                    self.handle(msg)
        finally:
            dealer.close(linger=0)

    def send(self, kind: str, *, job_state: str | None = None, **extra: Any) -> None:
        self.sequence += 1
        body = wire.node_message(
            node=self.name,
            client=self.name,
            org=self.org,
            type=kind,
            sequence=self.sequence,
            t=time.time(),
            incarnation=self.incarnation,
            job_id=extra.pop("job_id", self.job[0] if self.job else None),
            job_state=job_state,
            **extra,
        )
        self.dealer.send_multipart(wire.hmac_frames(self.key, body), zmq.NOBLOCK)

    def handle(self, msg: dict[str, Any]) -> None:
        kind, job_id = msg.get("type"), msg.get("job_id")
        if kind == "abort":
            had = self.job[0] if self.job else None
            self.job, self.state = None, "idle"
            self.send("aborted", job_id=had)
        elif kind == "commit":
            command = WHITELIST.get(msg.get("command", ""))
            if self.state != "idle" or command is None:
                self.send("nack_commit", job_id=job_id)
                return
            self.job, self.state = (job_id, command), "committed"
            self.send("ack_commit", job_id=job_id)
        elif kind == "run":
            if self.state != "committed" or self.job is None or self.job[0] != job_id:
                self.send("nack_run", job_id=job_id)
                return
            self.state = "running"
            self.send("ack_run", job_id=job_id)
            env = {**os.environ, "CHEF_PUSH_NODE_NAME": self.name, "CHEF_PUSH_JOB_ID": job_id}
            done = subprocess.run(["/bin/sh", "-c", self.job[1]], capture_output=True, env=env)
            result = "succeeded" if done.returncode == 0 else "failed"
            self.send(
                result,
                job_id=job_id,
                stdout=done.stdout.decode(errors="replace"),
                stderr=done.stderr.decode(errors="replace"),
            )
            self.job, self.state = None, "idle"


def run_demo(args: argparse.Namespace) -> int:
    state_root = Path(tempfile.mkdtemp(prefix="pushy-demo-"))
    server = LocalServer(state_root / "state")
    print(f"starting pushy server (state in {server.state_dir}, log in {server.log_path})")
    ctx = zmq.Context()
    agents: list[Agent] = []
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
            agent = Agent(url, "demo", name, body["chef_key"]["private_key"], ctx)
            agent.start()
            agents.append(agent)
        print(f"started {len(agents)} node agents: {', '.join(names)}")
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
        for agent in agents:
            agent.stop_event.set()
        for agent in agents:
            agent.join(5)
        ctx.destroy(linger=0)
        if server.proc is not None and server.proc.poll() is None:
            try:
                server.stop(20)
            except subprocess.TimeoutExpired:
                pass  # stop() killed it
        if not args.keep:
            shutil.rmtree(state_root, ignore_errors=True)
