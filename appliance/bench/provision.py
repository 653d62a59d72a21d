"""N node identities on a server, fast: cached RSA keys and concurrent client registration.

A 2048-bit key costs ~50 ms to generate, so keys are made once in worker processes and kept
in one growing PEM file (``$XDG_CACHE_HOME/pushy-bench/keys.pem``): node *i* always uses key
*i*. Clients are registered with their public key (``POST /organizations/ORG/clients``) from
a pool of threads with keep-alive connections, so the server's group commit batches them.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from appliance.core.keys import generate_rsa, load_private_pem, private_pem, public_pem
from appliance.signedhttp import HttpError, SignedClient

END_MARK = "-----END RSA PRIVATE KEY-----"
KEYS_PER_TASK = 25
REGISTER_THREADS = 8
MAX_NODES = 200_000


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pushy-bench"


def node_names(count: int, prefix: str = "sim-") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(count)]


def progress(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def read_keys(path: Path, count: int | None = None) -> list[str]:
    """The PEM texts in ``path`` (the first ``count`` of them)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="ascii")
    pems = [p.strip() + "\n" + END_MARK + "\n" for p in text.split(END_MARK) if p.strip()]
    return pems if count is None else pems[:count]


def _generate(count: int) -> list[str]:
    return [private_pem(generate_rsa()) for _ in range(count)]


def ensure_keys(count: int, cache_dir: Path, *, processes: int | None = None) -> Path:
    """The key file holding at least ``count`` keys; missing ones are generated in parallel."""
    if not 0 < count <= MAX_NODES:
        raise ValueError(f"node count must be 1..{MAX_NODES}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / "keys.pem"
    have = len(read_keys(path))
    missing = count - have
    if missing <= 0:
        return path
    workers = processes or os.cpu_count() or 1
    progress(f"generating {missing} RSA keys in {workers} processes (cached in {path})")
    started = time.monotonic()
    chunks = [min(KEYS_PER_TASK, missing - i) for i in range(0, missing, KEYS_PER_TASK)]
    done = 0
    last_report = started
    ctx = multiprocessing.get_context("spawn")
    with (
        concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool,
        open(path, "a", encoding="ascii") as out,
    ):
        for pems in pool.map(_generate, chunks):
            out.write("".join(pems))
            out.flush()
            done += len(pems)
            if time.monotonic() - last_report > 2 or done == missing:
                last_report = time.monotonic()
                progress(f"  {done}/{missing} keys ({done / (last_report - started):.0f}/s)")
    return path


def create_org(api: SignedClient, admin: str, admin_key: RSAPrivateKey, org: str) -> None:
    """Create ``org`` unless it exists."""
    try:
        api.json("POST", "/organizations", {"name": org, "full_name": org}, admin, admin_key)
    except HttpError as exc:
        if exc.status != 409:
            raise


def register_clients(
    api: SignedClient,
    admin: str,
    admin_key: RSAPrivateKey,
    org: str,
    names: list[str],
    pems: list[str],
    *,
    threads: int = REGISTER_THREADS,
) -> float:
    """Register every node as a client with its public key; returns the seconds it took.

    A client that exists already (a reused org on an existing server) is deleted and created
    again with our key, so its key is the one the simulator holds."""
    started = time.monotonic()
    path = f"/organizations/{org}/clients"
    done = 0
    last_report = started

    def one(index: int) -> None:
        name = names[index]
        body = {"name": name, "public_key": public_pem(load_private_pem(pems[index], trusted=True))}
        try:
            api.json("POST", path, body, admin, admin_key)
        except HttpError as exc:
            if exc.status != 409:
                raise
            api.json("DELETE", f"{path}/{name}", None, admin, admin_key)
            api.json("POST", path, body, admin, admin_key)

    progress(f"registering {len(names)} clients in org {org} ({threads} threads)")
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for future in concurrent.futures.as_completed(
            [pool.submit(one, i) for i in range(len(names))]
        ):
            future.result()
            done += 1
            if time.monotonic() - last_report > 2:
                last_report = time.monotonic()
                progress(f"  {done}/{len(names)} clients")
    seconds = time.monotonic() - started
    progress(f"  {len(names)} clients in {seconds:.1f} s ({len(names) / seconds:.0f}/s)")
    return seconds
