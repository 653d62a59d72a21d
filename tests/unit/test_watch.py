"""The pure part of ``pushy watch`` (messages → view model, plain lines, the drawn view) and the
stream's subscription message, without sockets or clocks."""

from __future__ import annotations

import pytest

from appliance.knife.session import CliError
from appliance.knife.watch import View, line, render, short_time, subscription, ws_url
from appliance.server.ws_routes import ALL, Subscription, parse_subscription

T = "2026-11-27 10:00:00.123456Z"


def job_event(job: str, event: str, n: int, **data: object) -> dict:
    return {
        "type": "job_event",
        "job": job,
        "event": event,
        "id": f"job-{n}",
        "data": {"timestamp": T, **data},
    }


def node(name: str, availability: str, status: str = "online") -> dict:
    return {
        "type": "node",
        "node": name,
        "availability": availability,
        "status": status,
        "timestamp": T,
    }


def hello(nodes: dict[str, str], jobs: list[dict] | None = None) -> dict:
    return {
        "type": "hello",
        "org": "acme",
        "timestamp": T,
        "keep_alive_time": 2,
        "subscription": {"jobs": "*", "nodes": True},
        "nodes": nodes,
        "jobs": jobs or [],
    }


def test_hello_gives_the_nodes_and_live_jobs_snapshot():
    view = View()
    detail = {
        "id": "J1",
        "command": "chef-client",
        "status": "running",
        "nodes": {"running": ["a", "b"], "succeeded": ["c"]},
    }
    view.apply(hello({"a": "available", "b": "unavailable"}, [detail]))
    assert view.org == "acme" and view.connected and view.keep_alive_time == 2
    assert view.node_counts() == {"available": 1, "unavailable": 1, "offline": 0}
    assert view.jobs["J1"].counts() == {"running": 2, "succeeded": 1}
    assert view.jobs["J1"].status == "running"


def test_node_changes_update_counts_and_offline_nodes_stay_listed():
    view = View()
    view.apply(hello({"a": "available"}))
    view.apply(node("b", "unavailable"))
    view.apply(node("b", "available"))
    view.apply(node("a", "unavailable", "offline"))
    assert view.nodes == {"a": "offline", "b": "available"}
    assert view.node_counts() == {"available": 1, "unavailable": 0, "offline": 1}


def test_a_job_runs_to_completion():
    view = View()
    view.apply(hello({}))
    view.apply(job_event("J", "start", 1, command="chef-client", node_count=3, quorum=3))
    assert view.jobs["J"].counts() == {"new": 3}
    view.apply(job_event("J", "quorum_vote", 2, node="a", status="success"))
    view.apply(job_event("J", "quorum_vote", 3, node="b", status="success"))
    view.apply(job_event("J", "quorum_vote", 4, node="c", status="failure"))
    assert view.jobs["J"].counts() == {"nacked": 1, "ready": 2}
    view.apply(job_event("J", "quorum_succeeded", 5))
    view.apply(job_event("J", "run_start", 6, node="a"))
    view.apply(job_event("J", "run_start", 7, node="b"))
    assert view.jobs["J"].status == "running"
    assert view.jobs["J"].counts() == {"nacked": 1, "running": 2}
    view.apply(job_event("J", "run_complete", 8, node="a", status="success"))
    view.apply(job_event("J", "run_complete", 9, node="b", status="failure"))
    view.apply(job_event("J", "rehab", 10, node="b"))  # after a result: no change
    view.apply(job_event("J", "job_complete", 11, status="complete"))
    assert view.jobs == {}
    [done] = view.recent
    assert done.status == "complete"
    assert done.counts() == {"failed": 1, "nacked": 1, "succeeded": 1}


def test_quorum_failure_and_down_nodes():
    view = View()
    view.apply(job_event("J", "start", 1, command="x", node_count=2))
    view.apply(job_event("J", "quorum_vote", 2, node="a", status="down"))
    view.apply(job_event("J", "rehab", 3, node="a"))
    view.apply(job_event("J", "quorum_vote", 4, node="b", status="success"))
    view.apply(job_event("J", "job_complete", 5, status="quorum_failed"))
    assert view.recent[0].counts() == {"unavailable": 1, "was_ready": 1}


def test_rehab_of_an_active_node_makes_it_unavailable_in_the_job():
    view = View()
    view.apply(job_event("J", "start", 1, command="x", node_count=1))
    view.apply(job_event("J", "rehab", 2, node="a"))
    assert view.jobs["J"].nodes == {"a": "unavailable"}


def test_org_events_do_not_duplicate_or_resurrect_jobs():
    view = View()
    org_start = {
        "type": "org_event",
        "event": "start",
        "id": "org-1",
        "data": {"timestamp": T, "job": "J", "command": "x", "node_count": 1},
    }
    org_end = {
        "type": "org_event",
        "event": "job_complete",
        "id": "org-2",
        "data": {"timestamp": T, "job": "J", "status": "complete"},
    }
    view.apply(job_event("J", "start", 1, command="x", node_count=1))
    view.apply(org_start)
    assert list(view.jobs) == ["J"]
    view.apply(job_event("J", "job_complete", 2, status="complete"))
    view.apply(org_start)  # a late duplicate
    view.apply(org_end)
    assert view.jobs == {} and [j.id for j in view.recent] == ["J"]
    other = View()
    other.apply(job_event("K", "quorum_vote", 3, node="a", status="success"))
    assert other.jobs == {}, "the middle of a job never seen starting is ignored"


def test_recent_jobs_are_bounded():
    view = View()
    for i in range(12):
        view.apply(job_event(f"J{i}", "start", 1, command="x", node_count=0))
        view.apply(job_event(f"J{i}", "job_complete", 2, status="complete"))
    assert [j.id for j in view.recent] == ["J11", "J10", "J9", "J8", "J7"]


def test_plain_lines():
    assert line(node("node1", "available")) == "2026-11-27T10:00:00Z node node1 available"
    assert (
        line(node("node1", "unavailable", "offline"))
        == "2026-11-27T10:00:00Z node node1 unavailable (offline)"
    )
    assert (
        line(job_event("ID", "quorum_vote", 2, node="node1", status="success"))
        == "2026-11-27T10:00:00Z job ID quorum_vote node1 success"
    )
    assert (
        line(job_event("ID", "start", 1, command="chef-client", node_count=2))
        == "2026-11-27T10:00:00Z job ID start chef-client (2 nodes)"
    )
    assert (
        line(job_event("ID", "job_complete", 9, status="complete"))
        == "2026-11-27T10:00:00Z job ID job_complete complete"
    )
    assert line(hello({"a": "available", "b": "unavailable"}, [{"id": "J"}])) == (
        "2026-11-27T10:00:00Z watching acme: 2 nodes online, 1 available; 1 jobs running"
    )
    assert line({"type": "error", "error": "bad"}) == "server: bad"
    for quiet in ("keepalive", "subscribed", "org_event"):
        assert line({"type": quiet, "data": {}}) is None


def test_short_time():
    assert short_time(T) == "2026-11-27T10:00:00Z"
    assert short_time("odd") == "odd"
    assert short_time(None) == ""


def test_render_lists_unavailable_nodes_and_job_counts_within_the_width():
    view = View()
    view.apply(hello({"a": "available", "b": "unavailable"}))
    view.apply(node("c", "unavailable", "offline"))
    view.apply(job_event("JOB1234567890ABCDEF", "start", 1, command="chef-client", node_count=2))
    view.apply(job_event("JOB1234567890ABCDEF", "quorum_vote", 2, node="a", status="success"))
    lines = render(view, width=60, clock="10:00:00")
    assert lines[0] == "pushy watch  acme  10:00:00  (connected)"
    assert lines[1] == "nodes: 2 online, 1 available, 1 unavailable, 1 offline"
    assert lines[2] == "  not available: b, c (offline)"
    assert lines[3] == "running jobs: 1"
    assert lines[4] == "  JOB1234567890ABCDEF  voting   new 1 ready 1  chef-client"
    view.apply(job_event("JOB1234567890ABCDEF", "start", 1, command="x" * 100, node_count=2))
    assert render(view, width=60)[4] == "  JOB1234567890ABCDEF  voting   new 1 ready 1  " + "x" * 13
    assert all(len(text) <= 60 for text in lines)


def test_jobs_of_one_org_are_told_apart_by_their_whole_ids():
    """Every job id of an org starts with the same 12 digits (the org's): the view shows the
    whole id, which is also what `pushy job status ID` takes."""
    view = View()
    view.apply(hello({"a": "available"}))
    ids = ["0123456789ab" + "1" * 20, "0123456789ab" + "2" * 20]
    for n, job_id in enumerate(ids, start=1):
        view.apply(job_event(job_id, "start", n, command="chef-client", node_count=1))
    shown = [text for text in render(view, width=100) if "chef-client" in text]
    assert len(shown) == 2
    assert {text.split()[0] for text in shown} == set(ids)


def test_render_bounds_the_node_list():
    view = View()
    view.apply(hello({f"n{i:03d}": "unavailable" for i in range(100)}))
    [listed] = [text for text in render(view, width=1000) if "not available" in text]
    assert "n029" in listed and "n030" not in listed and "(+70)" in listed


def test_ws_url():
    assert ws_url("http://h:1", "/organizations/o/pushy/ws") == "ws://h:1/organizations/o/pushy/ws"
    assert ws_url("https://h/", "/organizations/o/pushy/ws") == "wss://h/organizations/o/pushy/ws"
    assert ws_url("https://h/chef", "/x") == "wss://h/chef/x"
    with pytest.raises(CliError):
        ws_url("ftp://h", "/x")


def test_subscription_message_for_the_options():
    assert subscription(None, True) is None
    assert subscription(["A", "B"], True) == {"subscribe": {"jobs": ["A", "B"], "nodes": True}}
    assert subscription(None, False) == {"subscribe": {"jobs": "*", "nodes": False}}


def test_server_parses_subscriptions_keeping_what_is_left_out():
    start = Subscription()
    got = parse_subscription('{"subscribe": {"jobs": ["a", "b"]}}', start)
    assert got.jobs == frozenset({"a", "b"}) and got.nodes is True
    got = parse_subscription(b'{"subscribe": {"nodes": false}}', got)
    assert got.jobs == frozenset({"a", "b"}) and got.nodes is False
    got = parse_subscription('{"subscribe": {"jobs": "*"}}', got)
    assert got.jobs == ALL and got.wants_job("anything")
    assert Subscription(frozenset({"a"})).wants_job("a")
    assert not Subscription(frozenset({"a"})).wants_job("b")


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"subscribe": {"jobs": "*"}, "more": 1}',
        '{"subscribe": []}',
        '{"subscribe": {"jobs": "all"}}',
        '{"subscribe": {"jobs": [1, 2]}}',
        '{"subscribe": {"nodes": "yes"}}',
        '{"subscribe": {"colour": "red"}}',
    ],
)
def test_server_rejects_malformed_subscriptions(text):
    with pytest.raises(ValueError):
        parse_subscription(text, Subscription())
