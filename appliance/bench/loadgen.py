"""Open-loop REST load from its own process: signed GETs at a fixed rate, keep-alive threads.

Request *k* is due at ``t0 + k / rate``; its latency is measured from that due time (so a slow
server shows up as latency, not as a lower request rate: no coordinated omission), and its
service time from when it was actually sent. Each path is signed once and its headers sent
again while the signature is valid (`signedhttp.Presigner`): 200 requests/s must not cost 200
RSA signatures a second on the cores the server runs on. The process reports its own CPU
seconds, so a report shows whether the load generator kept up.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from appliance.bench import procstat
from appliance.core.keys import load_private_pem
from appliance.signedhttp import Presigner, SignedClient


@dataclass(frozen=True)
class LoadSpec:
    base_url: str
    user: str
    key_pem: str
    paths: tuple[tuple[str, str], ...]  # (label, path), taken in turn
    rate: float
    seconds: float
    threads: int = 8
    nice: int = 0  # added to the load generator's niceness (--clients-nice)


def run_load(spec: LoadSpec) -> dict[str, Any]:
    """{label: {"latency": [...], "service": [...], "errors": n}} plus "sent", "seconds",
    "cpu_seconds" (this process, over the run) and "signatures" (RSA signatures made)."""
    api = SignedClient(spec.base_url, timeout=30)
    presigned = Presigner(api)
    key = load_private_pem(spec.key_pem)
    for _, path in spec.paths:  # before the clock starts
        presigned.headers("GET", path, spec.user, key)
    slots = itertools.count()
    lock = threading.Lock()
    out: dict[str, Any] = {
        label: {"latency": [], "service": [], "errors": 0, "statuses": {}}
        for label, _ in spec.paths
    }
    cpu0 = procstat.cpu_seconds(os.getpid()) or 0.0
    t0 = time.monotonic() + 0.2
    end = t0 + spec.seconds
    max_slots = int(spec.rate * spec.seconds) + 1

    def loop() -> None:
        while True:
            with lock:
                k = next(slots)
            if k >= max_slots:
                break
            due = t0 + k / spec.rate
            if due > end:
                break
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            label, path = spec.paths[k % len(spec.paths)]
            sent = time.monotonic()
            try:
                status = presigned.send("GET", path, spec.user, key).status
            except OSError:
                status = 0
            done = time.monotonic()
            record = out[label]
            with lock:
                record["latency"].append(done - due)
                record["service"].append(done - sent)
                record["statuses"][status] = record["statuses"].get(status, 0) + 1
                if status != 200:
                    record["errors"] += 1

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(spec.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(spec.seconds + 120)
    api.close()
    out["sent"] = sum(len(v["latency"]) for k, v in out.items() if isinstance(v, dict))
    out["seconds"] = time.monotonic() - t0
    out["cpu_seconds"] = (procstat.cpu_seconds(os.getpid()) or 0.0) - cpu0
    out["signatures"] = presigned.signatures
    out["niceness"] = os.nice(0)
    return out


def _entry(spec: LoadSpec, pipe: Any) -> None:
    if spec.nice:
        os.nice(spec.nice)
    pipe.send(run_load(spec))
    pipe.close()


def start(spec: LoadSpec) -> tuple[multiprocessing.process.BaseProcess, Any]:
    """Run ``run_load(spec)`` in a new process; read its result from the returned pipe."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_entry, args=(spec, child), name="bench-load", daemon=True)
    proc.start()
    child.close()
    return proc, parent
