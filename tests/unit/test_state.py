"""The reducer: records rebuild state; a snapshot (``to_records``) rebuilds the same state."""

from __future__ import annotations

import base64
import copy

from appliance.core import identity, jobfsm
from appliance.core.state import State, apply, prune_jobs, to_records

PEM = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----\n"
T0 = 1_700_000_000.0


def job_created(job_id: str, org: str, nodes: list[str], t: float) -> dict:
    return {
        "type": "job_created",
        "t": t,
        "job": {
            "id": job_id,
            "org": org,
            "command": "chef-client",
            "nodes": nodes,
            "quorum": len(nodes),
            "run_timeout": 60,
            "user": None,
            "dir": None,
            "env": {"A": "b"},
            "file": "raw:x",
            "capture": True,
            "requestor": "pivotal",
        },
    }


def build() -> tuple[State, list[dict]]:
    """A state with identity, a finished and a live job, node keys, up nodes."""
    records: list[dict] = [
        {
            "type": "server_init",
            "incarnation": "inc",
            "curve_public": "P" * 40,
            "curve_secret": "S" * 40,
            "rsa_public_pem": PEM,
            "t": T0,
        },
        *identity.bootstrap_superuser(identity.IdentityState(), PEM),
        {
            "type": "org_created",
            "name": "acme",
            "full_name": "Acme",
            "guid": "0123456789abcdef0123456789abcdef",
        },
        {
            "type": "client_created",
            "org": "acme",
            "name": "n1",
            "validator": False,
            "keys": [{"name": "default", "public_key": PEM, "expiration_date": "infinity"}],
        },
        {"type": "group_created", "org": "acme", "name": "pushy_job_writers"},
        {
            "type": "group_updated",
            "org": "acme",
            "name": "pushy_job_writers",
            "users": [],
            "clients": ["n1"],
            "groups": [],
        },
        {
            "type": "session_key",
            "org": "acme",
            "node": "n1",
            "key": base64.b64encode(b"k" * 32).decode(),
            "t": T0,
        },
        {
            "type": "session_key",
            "org": "acme",
            "node": "n1",
            "key": base64.b64encode(b"j" * 32).decode(),
            "t": T0 + 1,
            "grace": 60,
        },
        {"type": "ccpk", "org": "acme", "node": "n1", "key": "C" * 40},
        {"type": "node_up", "org": "acme", "node": "n1", "incarnation": "ci"},
    ]
    state = State()
    for r in records:
        apply(state, r)
    # one job run to completion at T0, one left running at T0 + 100
    for job_id, t, finish in (("a" * 32, T0, True), ("b" * 32, T0 + 100, False)):
        created = job_created(job_id, "acme", ["n1"], t)
        apply(state, created)
        records.append(created)
        job = state.jobs[job_id]
        inputs = [
            lambda t, job=job: jobfsm.start(job, set(), t, server_name="s", voting_timeout=60),
            lambda t, job=job: jobfsm.on_message(job, "n1", "ack_commit", {}, t),
            lambda t, job=job: jobfsm.on_message(job, "n1", "ack_run", {}, t),
        ]
        if finish:
            inputs.append(
                lambda t, job=job: jobfsm.on_message(
                    job, "n1", "succeeded", {"stdout": "o", "stderr": ""}, t
                )
            )
        for i, feed in enumerate(inputs):
            first_new = len(job.events)
            step = feed(t + i)
            records.append({"type": "job_step", "job": job_id, "t": t + i, "changes": step.changes})
            state.note_job_events(job, first_new)
    return state, records


def comparable(state: State) -> dict:
    s = copy.copy(state.__dict__)
    s["org_events"] = [(e.n, e.org, e.name, e.data) for e in state.org_events]
    s.pop("last_seq")
    return s


def test_replaying_the_records_rebuilds_the_live_state():
    live, records = build()
    replayed = State()
    for r in records:
        apply(replayed, r)
    assert replayed.jobs == live.jobs
    assert replayed.identity == live.identity
    assert replayed.node_keys == live.node_keys
    assert replayed.org_event_count == live.org_event_count == 3  # start, job_complete, start


def test_snapshot_records_rebuild_the_same_state():
    state, _ = build()
    restored = State()
    assert prune_jobs(state, now=T0 + 200, retention=0) == []
    for r in to_records(state):
        apply(restored, r)
    assert restored.jobs == state.jobs
    assert restored.identity == state.identity
    assert restored.node_keys == state.node_keys
    assert restored.curve_index == {"C" * 40: ("acme", "n1")}
    assert restored.up_nodes == state.up_nodes
    assert restored.server == state.server
    assert restored.org_event_count == state.org_event_count


def test_snapshot_drops_finished_jobs_past_retention_only():
    state, _ = build()
    assert prune_jobs(state, now=T0 + 10_000, retention=1_000) == ["a" * 32]
    assert set(state.jobs) == {"b" * 32}  # the running job is kept however old
    restored = State()
    for r in to_records(state):
        apply(restored, r)
    assert set(restored.jobs) == {"b" * 32}


def test_rotated_session_key_keeps_the_previous_one_for_the_grace_period():
    state, _ = build()
    keys = state.node_keys[("acme", "n1")]
    assert keys.accepted_keys(T0 + 2) == [b"j" * 32, b"k" * 32]
    assert keys.accepted_keys(T0 + 61) == [b"j" * 32]


def test_deleting_a_client_removes_its_keys_and_curve_key():
    state, _ = build()
    apply(state, {"type": "client_deleted", "org": "acme", "name": "n1"})
    assert ("acme", "n1") not in state.node_keys
    assert state.curve_index == {}
    assert ("acme", "n1") not in state.up_nodes


def test_a_new_ccpk_replaces_the_old_one_in_the_allow_list():
    state, _ = build()
    apply(state, {"type": "ccpk", "org": "acme", "node": "n1", "key": "D" * 40})
    assert state.curve_index == {"D" * 40: ("acme", "n1")}
