"""The event log's records: one constructor per kind, so a record's shape is written once.

A record is a JSON object with a ``type`` (that is what the log stores and ``core.state.apply``
reads). The shells never build one by hand: they call these, and a change of shape here is a
change of log format (``core.migrations``: bump ``FORMAT`` and add a step). Identity records
(orgs, users, clients, keys, groups) are made by ``core.identity``, which also validates them.
"""

from __future__ import annotations

import base64
from typing import Any

from appliance.core import jobfsm

Record = dict[str, Any]


def server_init(
    *, incarnation: str, curve_public: str, curve_secret: str, rsa_public_pem: str, t: float
) -> Record:
    """The server's identity, written once at first start."""
    return {
        "type": "server_init",
        "incarnation": incarnation,
        "curve_public": curve_public,
        "curve_secret": curve_secret,
        "rsa_public_pem": rsa_public_pem,
        "t": t,
    }


def server_key(rsa_private_pem: str, rsa_public_pem: str) -> Record:
    """The server's RSA key, in a PostgreSQL log only: every server sharing the log signs its
    heartbeats with it, so a failover asks no node for anything new. (Older releases cannot
    read a PostgreSQL log at all, so this type needed no new format.)"""
    return {
        "type": "server_key",
        "rsa_private_pem": rsa_private_pem,
        "rsa_public_pem": rsa_public_pem,
    }


def job_created(
    *,
    job_id: str,
    org: str,
    command: str,
    nodes: list[str],
    quorum: int,
    run_timeout: int,
    user: str | None,
    dir: str | None,
    env: dict[str, str] | None,
    file: str | None,
    capture: bool,
    requestor: str,
    t: float,
    max_concurrency: int | str | None = None,
    max_errors: int | str | None = None,
) -> Record:
    record = {
        "type": "job_created",
        "t": t,
        "job": {
            "id": job_id,
            "org": org,
            "command": command,
            "nodes": list(nodes),
            "quorum": quorum,
            "run_timeout": run_timeout,
            "user": user,
            "dir": dir,
            "env": env,
            "file": file,
            "capture": capture,
            "requestor": requestor,
        },
    }
    # rolling execution: only when asked for, so a plain job's record is what it always was
    if max_concurrency is not None:
        record["job"]["max_concurrency"] = max_concurrency
    if max_errors is not None:
        record["job"]["max_errors"] = max_errors
    return record


def job_of(created: Record) -> jobfsm.Job:
    """The new job a ``job_created`` record describes (the reducer stores it; the server plans
    the job's first step on it before both records are written together)."""
    j = created["job"]
    return jobfsm.new_job(
        id=j["id"],
        org=j["org"],
        command=j["command"],
        nodes=list(j["nodes"]),
        quorum=j["quorum"],
        run_timeout=j["run_timeout"],
        user=j.get("user"),
        dir=j.get("dir"),
        env=j.get("env"),
        file=j.get("file"),
        capture=j.get("capture", False),
        requestor=j["requestor"],
        now=created["t"],
        max_concurrency=j.get("max_concurrency"),
        max_errors=j.get("max_errors"),
    )


def job_step(job_id: str, t: float, changes: list[list[Any]]) -> Record:
    """One FSM step's durable changes (``jobfsm.apply_change`` replays them)."""
    return {"type": "job_step", "job": job_id, "t": t, "changes": changes}


def session_key(org: str, node: str, key: bytes, *, t: float, grace: float) -> Record:
    """A node's new HMAC session key; the previous one stays valid for ``grace`` seconds."""
    return {
        "type": "session_key",
        "org": org,
        "node": node,
        "key": base64.b64encode(key).decode("ascii"),
        "t": t,
        "grace": grace,
    }


def ccpk(org: str, node: str, key: str) -> Record:
    """A node's CURVE public key (Z85), which the ZAP handler then allows."""
    return {"type": "ccpk", "org": org, "node": node, "key": key}


def node_up(org: str, node: str, incarnation: str) -> Record:
    return {"type": "node_up", "org": org, "node": node, "incarnation": incarnation}


def node_down(org: str, node: str) -> Record:
    return {"type": "node_down", "org": org, "node": node}


# Snapshot-only records (``core.state.to_records``) ------------------------------------------
def jobs_restore(fields: list[str], rows: list[list[Any]]) -> Record:
    return {"type": "jobs_restore", "fields": fields, "rows": rows}


def node_keys_restore(
    org: str,
    node: str,
    *,
    key: str | None,
    previous: str | None,
    previous_until: float,
    ccpk: str | None,
) -> Record:
    return {
        "type": "node_keys_restore",
        "org": org,
        "node": node,
        "key": key,
        "previous": previous,
        "previous_until": previous_until,
        "ccpk": ccpk,
    }


def counters(org_event_count: int) -> Record:
    return {"type": "counters", "org_event_count": org_event_count}
