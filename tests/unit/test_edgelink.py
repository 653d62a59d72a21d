"""The edge's forwarding rule and liveness, node addresses and assignment (core.edgelink), and
what the coordinator's node table does with edge reports (core.nodes)."""

from __future__ import annotations

import dataclasses

from appliance.core import edgelink
from appliance.core import nodes as corenodes
from appliance.core.state import NodeKeys

PARAMS = corenodes.Liveness(interval=1.0, decay_window=4, threshold=0.6, rehab_interval=1.0)
KEY = ("acme", "web1")


def beat(job_id=None, job_state="idle", incarnation="inc-1") -> dict:
    return {
        "type": "heartbeat",
        "org": KEY[0],
        "node": KEY[1],
        "incarnation_id": incarnation,
        "job_id": job_id,
        "job_state": job_state,
    }


def test_only_heartbeats_that_say_something_new_are_forwarded() -> None:
    nodes = edgelink.EdgeNodes(PARAMS)
    t = 1000.0
    assert nodes.on_message(KEY, b"\0a", beat(), t) == (True, None)  # first contact
    for i in range(1, 6):  # "still here", every second
        assert nodes.on_message(KEY, b"\0a", beat(), t + i) == (False, None)
    assert nodes.absorbed == 5
    assert nodes.on_message(KEY, b"\0b", beat(), t + 6) == (True, None)  # a new connection
    assert nodes.on_message(KEY, b"\0b", beat(incarnation="inc-2"), t + 7) == (True, None)
    nodes.live_jobs.add("j1")  # job progress comes in job messages: its beats end here
    assert not nodes.on_message(KEY, b"\0b", beat("j1", "committed", "inc-2"), t + 8)[0]
    assert not nodes.on_message(KEY, b"\0b", beat("j1", "committed", "inc-2"), t + 9)[0]
    assert not nodes.on_message(KEY, b"\0b", beat("j1", "running", "inc-2"), t + 10)[0]
    assert nodes.on_message(KEY, b"\0b", beat("j2", "running", "inc-2"), t + 11)[0]  # stray
    nodes.live_jobs.discard("j1")  # the job retired while the node still reports it
    assert nodes.on_message(KEY, b"\0b", beat("j1", "running", "inc-2"), t + 12)[0]
    job_message = {**beat("j1", None, "inc-2"), "type": "succeeded"}
    assert nodes.on_message(KEY, b"\0b", job_message, t + 13)[0]  # never absorbed


def test_a_node_that_stops_beating_is_reported_once_and_then_is_new_again() -> None:
    nodes = edgelink.EdgeNodes(PARAMS)
    nodes.on_message(KEY, b"\0a", beat(), 0.0)
    nodes.on_message(KEY, b"\0a", beat(), 1.0)
    assert nodes.scan(2.0) == []
    down = nodes.scan(6.0)
    assert down == [(KEY, b"\0a", "missed heartbeats")]
    assert nodes.scan(7.0) == []
    assert nodes.on_message(KEY, b"\0a", beat(), 8.0) == (True, None)


def test_an_edge_that_stood_still_keeps_its_beating_nodes() -> None:
    """Beats queued while the edge stood still (starved, stopped) are not a silence: neither
    the late scan nor the first beat read after it reports the node down."""
    nodes = edgelink.EdgeNodes(dataclasses.replace(PARAMS, tick=0.25))
    t = 0.0
    for _ in range(8):
        nodes.on_message(KEY, b"\0a", beat(), t)
        for _ in range(4):
            t += 0.25
            nodes.attend(t)
    t += 30.0
    assert nodes.scan(t) == []
    assert nodes.on_message(KEY, b"\0a", beat(), t) == (False, None)
    for _ in range(12):  # then silence, attended: down within a few intervals
        t += 0.25
        nodes.attend(t)
    assert nodes.scan(t) == [(KEY, b"\0a", "missed heartbeats")]


def test_a_heartbeat_after_a_long_silence_reports_the_node_down_and_is_not_forwarded() -> None:
    nodes = edgelink.EdgeNodes(PARAMS)
    nodes.on_message(KEY, b"\0a", beat(), 0.0)
    forward, down = nodes.on_message(KEY, b"\0a", beat(), 30.0)
    assert (forward, down) == (False, "heartbeat rate fell below the threshold")
    assert nodes.on_message(KEY, b"\0a", beat(), 31.0) == (True, None)


def test_reset_makes_every_node_a_first_contact() -> None:
    nodes = edgelink.EdgeNodes(PARAMS)
    nodes.on_message(KEY, b"\0a", beat(), 0.0)
    nodes.reset()
    assert nodes.on_message(KEY, b"\0a", beat(), 1.0) == (True, None)
    nodes.forget(KEY)
    assert nodes.on_message(KEY, b"\0a", beat(), 2.0) == (True, None)


def test_addresses_pack_and_never_collide_with_router_addresses() -> None:
    packed = edgelink.pack_address(b"local-0.abcd", b"\0\x01\x02\x03\x04")
    assert packed[0] != 0
    assert edgelink.unpack_address(packed) == (b"local-0.abcd", b"\0\x01\x02\x03\x04")
    assert packed.startswith(edgelink.pack_address(b"local-0.abcd", b""))
    for bad in (b"", b"\0\x01\x02\x03\x04", b"\x09ab"):
        try:
            edgelink.unpack_address(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_key_rows_round_trip() -> None:
    keys = NodeKeys(b"k" * 32, b"p" * 32, 123.5, "c" * 40)
    assert edgelink.keys_of_row(edgelink.key_row(KEY, keys)) == (KEY, keys)
    assert edgelink.keys_of_row(edgelink.key_row(KEY, None)) == (KEY, None)


def test_assignment_moves_only_the_nodes_of_a_group_that_comes_or_goes() -> None:
    keys = [("acme", f"n{i}") for i in range(400)]
    two = {k: edgelink.assign(k, ["", "east"]) for k in keys}
    three = {k: edgelink.assign(k, ["", "east", "west"]) for k in keys}
    assert 150 < sum(1 for g in two.values() if g == "east") < 250
    moved = [k for k in keys if two[k] != three[k]]
    assert moved and all(three[k] == "west" for k in moved)
    assert edgelink.assign(KEY, []) is None


def _table() -> corenodes.NodeTable:
    return corenodes.NodeTable(
        corenodes.Liveness(
            interval=1.0, decay_window=4, threshold=0.6, rehab_interval=1.0, at_edges=True
        )
    )


VIEW = corenodes.JobView(is_live=lambda _job: False, assignment=lambda _key: None)


def test_the_coordinator_leaves_liveness_to_the_edges() -> None:
    table = _table()
    a = edgelink.pack_address(b"e1", b"\0a")
    table.on_message(KEY, a, beat(), 0.0, VIEW)
    assert table.scan(100.0) == []  # no heartbeat for 100 s: only an edge may say it is down
    assert table.online(KEY) is not None


def test_a_late_down_from_the_edge_a_node_left_is_ignored() -> None:
    table = _table()
    old = edgelink.pack_address(b"e1", b"\0a")
    new = edgelink.pack_address(b"e2", b"\0b")
    table.on_message(KEY, old, beat(), 0.0, VIEW)
    effects = table.on_message(KEY, new, beat(), 1.0, VIEW)
    assert corenodes.Send(KEY, "ack") in effects  # a new address is acknowledged
    assert table.edge_down(KEY, old, "missed heartbeats") == []
    assert table.online(KEY) is not None
    effects = table.edge_down(KEY, new, "missed heartbeats")
    assert effects == [corenodes.Down(KEY, "missed heartbeats")]
    assert table.online(KEY) is None


def test_the_nodes_of_a_lost_edge_are_ghosts_until_they_speak_again() -> None:
    table = _table()
    e1 = edgelink.pack_address(b"e1", b"")
    table.on_message(KEY, e1 + b"\0a", beat(), 0.0, VIEW)
    other = ("acme", "db1")
    table.on_message(other, edgelink.pack_address(b"e2", b"\0a"), beat(), 0.0, VIEW)
    assert table.edge_lost(e1, 10.0) == [KEY]
    assert table.online(KEY) is None and table.online(other) is not None
    effects = table.on_message(KEY, edgelink.pack_address(b"e2", b"\0c"), beat(), 11.0, VIEW)
    assert effects == [corenodes.Send(KEY, "ack")]  # resumed where it was, no reset
    assert table.online(KEY) is not None
    assert table.edge_lost(e1, 12.0) == []
    table.edge_lost(edgelink.pack_address(b"e2", b""), 20.0)
    down = table.scan(20.0 + PARAMS.restart_grace)
    assert {d.key for d in down if isinstance(d, corenodes.Down)} == {KEY, other}
