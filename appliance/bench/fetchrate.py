"""``pushy bench fetch``: how many config fetches per second the server answers.

A restart storm is bound by this rate (every node that missed the server's heartbeats fetches
its config again), but in ``storm`` the fleet's own RSA work (signing each fetch, decrypting
each session key) shares the two cores with the server. Here each node's request is signed
once, before the clock starts (a Chef signature stays valid for the server's
``max_time_skew``, 15 minutes by default), and sent ``--rounds`` times from ``--threads``
keep-alive threads, as fast as the server answers: the first round registers every node's
CURVE key and mints its session key, the later ones are the storm's re-fetches (a new session
key each). Each round is signed anew, as of another second: the same signed bytes sent again
would be a replay, answered with the key already given (``core.servedfetches``). The load generator's own CPU is reported beside the server's, so a reader can
tell which of the two was saturated.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from typing import Any

import orjson
import zmq

from appliance.bench import procstat, provision, report
from appliance.bench.harness import common_params, finish, prepare, rounded
from appliance.bench.provision import progress
from appliance.client.fetch import config_path, connection_from_answer
from appliance.core.keys import load_private_pem
from appliance.signedhttp import SignedClient, Unreachable, request_headers


def fetch(args: argparse.Namespace) -> int:
    setup = prepare(args)
    try:
        results = _measure(setup, args)
    finally:
        setup.close()
    params = {**common_params(setup), "rounds": args.rounds, "threads": args.threads}
    rows: list[tuple[str, Any]] = [
        ("nodes", args.nodes),
        ("signing before the clock (s)", results["presign_s"]),
    ]
    for r in results["rounds"]:
        i = r["round"]
        rows += [
            (f"round {i}: fetches/s", r["fetches_per_s"]),
            (f"round {i}: latency p50 / p99 (ms)", f"{r['p50_ms']} / {r['p99_ms']}"),
            (f"round {i}: server CPU (s per 1,000 fetches)", r["server_cpu_per_1000_s"]),
            (f"round {i}: load generator CPU (s per 1,000)", r["loadgen_cpu_per_1000_s"]),
            (f"round {i}: errors", r["errors"]),
        ]
    rows.append(("session key decrypts (sample)", results["sample_ok"]))
    return finish(setup, "fetch", params, results, rows)


def _measure(setup: Any, args: argparse.Namespace) -> dict[str, Any]:
    pems = provision.read_keys(setup.key_file, len(setup.names))
    api = SignedClient(setup.url, timeout=60)
    prefix = f"/organizations/{setup.org}"
    keys = [load_private_pem(pem, trusted=True) for pem in pems]
    curves = [zmq.curve_keypair()[0] for _ in setup.names]
    signed_at = time.time()
    presign_s = 0.0
    rounds = []
    last_body: bytes = b""
    for i in range(1, args.rounds + 1):
        progress(f"signing {len(setup.names)} config requests")
        t = time.monotonic()
        requests = []
        for name, key, curve in zip(setup.names, keys, curves, strict=True):
            path = config_path(prefix, name, curve)
            at = signed_at - i  # each round another second: new signatures
            requests.append(
                (path, request_headers(key, name, "GET", api.prefix + path, b"", at=at))
            )
        presign_s += time.monotonic() - t
        r, last_body = _round(api, requests, args.threads, setup.server_pid)
        r["round"] = i
        progress(f"round {i}: {r['fetches_per_s']} fetches/s, {r['errors']} errors")
        rounds.append(r)
    api.close()
    return {
        "presign_s": round(presign_s, 2),
        "rounds": rounds,
        "sample_ok": _decrypts(last_body, pems[-1], setup.names[-1]),
    }


def _round(
    api: SignedClient, requests: list[tuple[str, dict[str, str]]], threads: int, pid: int | None
) -> tuple[dict[str, Any], bytes]:
    """Every request once, from ``threads`` closed-loop threads; (figures, the last body)."""
    lock = threading.Lock()
    todo = iter(range(len(requests)))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    last: list[bytes] = [b""]

    def loop() -> None:
        while True:
            with lock:
                k = next(todo, None)
            if k is None:
                return
            path, headers = requests[k]
            sent = time.monotonic()
            try:
                reply = api.send_presigned("GET", path, b"", headers)
                status = reply.status
            except Unreachable:
                status = 0
            done = time.monotonic()
            with lock:
                latencies.append(done - sent)
                statuses[status] = statuses.get(status, 0) + 1
                if k == len(requests) - 1 and status == 200:
                    last[0] = reply.data

    server0 = procstat.cpu_seconds(pid) if pid else None
    own0 = procstat.cpu_seconds(os.getpid()) or 0.0
    t0 = time.monotonic()
    workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.monotonic() - t0
    own = (procstat.cpu_seconds(os.getpid()) or 0.0) - own0
    server1 = procstat.cpu_seconds(pid) if pid else None
    server = None if server0 is None or server1 is None else server1 - server0
    n = len(requests)
    ms = [v * 1000 for v in latencies]
    return {
        "fetches": n,
        "seconds": round(wall, 3),
        "fetches_per_s": round(n / wall, 1),
        "p50_ms": rounded(report.percentile(ms, 50), 1),
        "p99_ms": rounded(report.percentile(ms, 99), 1),
        "server_cpu_s": rounded(server, 2),
        "server_cpu_percent": None if server is None else round(100 * server / wall, 1),
        "server_cpu_per_1000_s": None if server is None else round(1000 * server / n, 3),
        "loadgen_cpu_s": round(own, 2),
        "loadgen_cpu_percent": round(100 * own / wall, 1),
        "loadgen_cpu_per_1000_s": round(1000 * own / n, 3),
        "statuses": statuses,
        "errors": n - statuses.get(200, 0),
    }, last[0]


def _decrypts(body: bytes, pem: str, node: str) -> bool:
    """The last answer is a config whose session key the node's key decrypts (the client's
    own reading of it): the bench measured real answers, not errors."""
    if not body:
        return False
    try:
        connection_from_answer(
            200, orjson.loads(body), load_private_pem(pem), allow_unencrypted=False, node=node
        )
    except (ValueError, KeyError, TypeError):
        return False
    return True
