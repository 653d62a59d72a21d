"""SSE feeds end to end (server-protocol.md §6.8, §10.1 #22-23, §10.2 "SSE").

Feeds are read by a background thread that keeps every raw line, so a test can drive the nodes
while a stream is open, check the exact wire format (keepalive comments included), and parse
the events with the harness's strict parser (an event counts only at its blank line).
"""

from __future__ import annotations

import re
import time
from typing import Any

from tests.e2e.helpers import (
    SUCCESS,
    Feed,
    commit_and_run,
    feed_path,
    get_job,
    pause,
    post_job,
    shape,
    wait_job,
)
from tests.support import Chef, server_fixture, wait_for

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}Z$")
DATA_KEYS = {
    "start": ["timestamp", "command", "run_timeout", "quorum", "node_count", "user", "capture"],
    "quorum_vote": ["timestamp", "node", "status"],
    "quorum_succeeded": ["timestamp"],
    "run_start": ["timestamp", "node"],
    "run_complete": ["timestamp", "node", "status"],
    "job_complete": ["timestamp", "status"],
    "rehab": ["timestamp", "node"],
}
WAIT_COMPLETE = 2.0
ORG_FEED_EXPIRATION = 3.0


def check_format(events: list[tuple[str, str, dict]], ids: str = "job") -> None:
    """Ids unique with the right prefix; timestamps well formed, unique and increasing."""
    assert len({e[1] for e in events}) == len(events)
    assert all(re.fullmatch(ids + r"-\d+", e[1]) for e in events), [e[1] for e in events]
    stamps = [e[2]["timestamp"] for e in events]
    assert all(TIMESTAMP.match(s) for s in stamps), stamps
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps), stamps


def event_blocks(lines: list[str]) -> list[list[str]]:
    """The raw lines grouped by blank lines, keepalive comments left out."""
    blocks: list[list[str]] = []
    current: list[str] = []
    for line in lines:
        if line == "":
            if current:
                blocks.append(current)
            current = []
        elif not line.startswith(":"):
            current.append(line)
    assert current == [], f"an unterminated event: {current}"
    return blocks


server = server_fixture(
    "sse",
    voting_timeout=1.5,
    wait_complete_time=WAIT_COMPLETE,
    keep_alive_time=1,
    org_feed_expiration=ORG_FEED_EXPIRATION,
    heartbeat_interval=200,
)


# ---------------------------------------------------------------------------------------------
# Job feed


def test_job_feed_streams_live_to_two_readers_with_keepalives(fleet, server):
    org, admin, (n1,) = fleet.setup("n1")
    job_id = post_job(admin, org, ["n1"])
    first = Feed(server, feed_path(org, job_id)).begin()
    second = Feed(server, feed_path(org, job_id, plural=True)).begin()
    for feed in (first, second):
        r = feed.response
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers["X-Accel-Buffering"] == "no"
    commit_and_run(n1, job_id)
    # The events arrive as they happen, before the job ends ...
    wait_for(lambda: len(first.events) == 4 and len(second.events) == 4, nodes=(n1,))
    assert shape(first.events) == SUCCESS[:4]
    pause(2.5, (n1,))  # ... and a silence longer than keep_alive_time brings keepalives.
    assert ":keepalive" in first.lines
    n1.send("succeeded", job_id=job_id)
    n1.idle()
    events = first.finish()
    assert second.finish() == events
    assert first.ended_by_server and second.ended_by_server
    assert shape(events) == SUCCESS
    assert [e[1] for e in events] == [f"job-{i}" for i in range(1, 7)]
    check_format(events)
    for name, _, data in events:
        assert list(data) == DATA_KEYS[name], (name, data)
    start = events[0][2]
    assert start["command"] == "chef-client" and start["run_timeout"] == 3600
    assert (start["quorum"], start["node_count"], start["user"]) == (1, 1, "pivotal")
    assert start["capture"] is False
    blocks = event_blocks(first.lines)
    assert [[line.split(": ", 1)[0] for line in b] for b in blocks] == [["event", "id", "data"]] * 6
    assert first.lines[-1] == ""  # the last event ends with a blank line too


def test_start_event_with_options_keeps_the_field_order(fleet, server):
    org, admin, _keys = fleet.org(("off",))
    job_id = post_job(
        admin,
        org,
        ["off"],
        "run",
        user="u",
        dir="/d",
        env={"K": "V"},
        file="base64:aGk=",
        capture_output=True,
        quorum=0,
        run_timeout=9,
    )
    events = Feed(server, feed_path(org, job_id)).begin().finish()
    start = events[0][2]
    assert list(start) == [
        "timestamp",
        "command",
        "run_timeout",
        "quorum",
        "node_count",
        "user",
        "job_user",
        "dir",
        "env",
        "file_specified",
        "capture",
    ]
    assert start == {
        "timestamp": start["timestamp"],
        "command": "run",
        "run_timeout": 9,
        "quorum": 0,
        "node_count": 1,
        "user": "pivotal",
        "job_user": "u",
        "dir": "/d",
        "env": {"K": "V"},
        "file_specified": True,
        "capture": True,
    }
    # quorum 0 with every node unavailable is reached at once (§5.4).
    assert shape(events) == [
        ("start", None, None),
        ("quorum_vote", "off", "down"),
        ("rehab", "off", None),
        ("quorum_succeeded", None, None),
        ("job_complete", None, "complete"),
    ]
    check_format(events)


def test_resume_with_last_event_id(fleet, server):
    org, admin, (n1,) = fleet.setup("n1")
    job_id = post_job(admin, org, ["n1"])
    commit_and_run(n1, job_id)
    wait_for(lambda: get_job(admin, org, job_id)["nodes"] == {"running": ["n1"]}, nodes=(n1,))
    seen = admin.sse(feed_path(org, job_id), until="quorum_succeeded")
    assert [e[1] for e in seen] == ["job-1", "job-2", "job-3"]
    resumed = Feed(server, feed_path(org, job_id), last_event_id=seen[-1][1]).begin()
    wait_for(lambda: len(resumed.events) == 1, nodes=(n1,))  # the backlog: run_start
    n1.send("succeeded", job_id=job_id)
    n1.idle()
    rest = resumed.finish()
    assert [e[1] for e in rest] == ["job-4", "job-5", "job-6"]
    full = admin.sse(feed_path(org, job_id))  # still lingering: the whole list
    assert seen + rest == full
    # Within the linger window: resuming gives exactly what is left, then the stream ends.
    tail = Feed(server, feed_path(org, job_id), last_event_id="job-5").begin().finish()
    assert tail == full[5:]
    for bogus in ("job-99", "org-1", "nonsense", ""):
        replay = Feed(server, feed_path(org, job_id), last_event_id=bogus).begin().finish()
        assert replay == full, bogus


def test_summary_once_the_linger_window_is_over(fleet, server):
    org, admin, (n1,) = fleet.setup("n1")
    job_id = post_job(admin, org, ["n1"])
    commit_and_run(n1, job_id)
    n1.send("succeeded", job_id=job_id)
    n1.idle()
    wait_job(admin, org, job_id, "complete", (n1,))
    wait_for(lambda: job_id not in server.status()["job_processes"], 10, (n1,))
    for last_id in (None, "job-3"):  # Last-Event-ID is ignored
        feed = Feed(server, feed_path(org, job_id), last_event_id=last_id).begin()
        events = feed.finish()
        assert [(e[0], e[1]) for e in events] == [("summary", "job-1")]
        data = events[0][2]
        assert TIMESTAMP.match(data["timestamp"])
        assert list(data)[:3] == ["timestamp", "nodes", "id"]
        assert {k: v for k, v in data.items() if k != "timestamp"} == get_job(admin, org, job_id)
        assert feed.lines[-1] == ""


def test_job_feed_refusals(fleet, server):
    org, admin, _keys = fleet.org(("off",))
    job_id = post_job(admin, org, ["off"])
    for plural in (False, True):
        path = feed_path(org, job_id, plural)
        assert admin.get(path).status_code == 406  # Accept: application/json
        sse = {"Accept": "text/event-stream"}
        assert admin.get(feed_path(org, "0" * 32, plural), headers=sse).status_code == 404
        assert admin.get(feed_path("no-such-org", job_id, plural), headers=sse).status_code == 404
        assert admin.post(path, headers=sse).status_code == 405
        stranger = Chef(server.url, "invalid", server.pivotal_key.read_bytes())
        assert stranger.get(path, headers=sse).status_code == 401
    assert admin.get(feed_path(org)).status_code == 406
    assert admin.get(feed_path(org, plural=True)).status_code == 406


# ---------------------------------------------------------------------------------------------
# Org feed


def _offline_job(admin: Chef, org: str, command: str) -> str:
    """A job on an offline node: it starts and ends (quorum_failed) inside the POST."""
    return post_job(admin, org, ["off"], command)


def _org_view(events: list[tuple[str, str, dict]]) -> list[tuple[str, Any, Any]]:
    return [(name, data.get("job"), data.get("status")) for name, _, data in events]


def test_org_feed_without_last_event_id_sends_only_new_events(fleet, server):
    org, admin, _keys = fleet.org(("off",))
    old = _offline_job(admin, org, "old")
    feed = Feed(server, feed_path(org)).begin()
    new = _offline_job(admin, org, "new")
    wait_for(lambda: len(feed.events) == 2)
    events = feed.stop()
    assert _org_view(events) == [("start", new, None), ("job_complete", new, "quorum_failed")]
    assert old not in str(events)
    check_format(events, "org")
    start, complete = events[0][2], events[1][2]
    assert list(start) == ["timestamp", "job", *DATA_KEYS["start"][1:]]
    assert list(complete) == ["timestamp", "job", "status"]
    assert start["command"] == "new"
    # The org events carry the job events' own timestamps.
    job_events = admin.sse(feed_path(org, new))
    assert start["timestamp"] == job_events[0][2]["timestamp"]
    assert complete["timestamp"] == job_events[-1][2]["timestamp"]


def test_org_feed_replay_known_and_unknown_ids_and_isolation(fleet, server):
    org, admin, _keys = fleet.org(("off",))
    other, other_admin, _ = fleet.org(("off",))
    a = _offline_job(admin, org, "a")
    noise = _offline_job(other_admin, other, "elsewhere")
    b = _offline_job(admin, org, "b")
    everything = Feed(server, feed_path(org), last_event_id="org-999999").begin()
    wait_for(lambda: len(everything.events) == 5)
    replay = everything.stop()
    assert replay[0][0] == "start_of_history" and replay[0][1] == "start_id"
    assert list(replay[0][2]) == ["timestamp"] and TIMESTAMP.match(replay[0][2]["timestamp"])
    assert _org_view(replay[1:]) == [
        ("start", a, None),
        ("job_complete", a, "quorum_failed"),
        ("start", b, None),
        ("job_complete", b, "quorum_failed"),
    ]
    assert noise not in str(replay)
    check_format(replay[1:], "org")
    # A known id: the events after it, and then live ones.
    after = Feed(server, feed_path(org), last_event_id=replay[2][1]).begin()
    wait_for(lambda: len(after.events) == 2)
    c = _offline_job(admin, org, "c")
    wait_for(lambda: len(after.events) == 4)
    assert _org_view(after.stop()) == [
        ("start", b, None),
        ("job_complete", b, "quorum_failed"),
        ("start", c, None),
        ("job_complete", c, "quorum_failed"),
    ]
    # The other org's feed has only its own job.
    theirs = Feed(server, feed_path(other), last_event_id="bogus").begin()
    wait_for(lambda: len(theirs.events) == 3)
    pause(0.3, ())
    assert _org_view(theirs.stop()) == [
        ("start_of_history", None, None),
        ("start", noise, None),
        ("job_complete", noise, "quorum_failed"),
    ]


def test_org_feed_forgets_after_the_expiration(fleet, server):
    org, admin, _keys = fleet.org(("off",))
    _offline_job(admin, org, "soon forgotten")
    known = Feed(server, feed_path(org), last_event_id="bogus").begin()
    wait_for(lambda: len(known.events) == 3)
    first_id = known.stop()[1][1]
    time.sleep(ORG_FEED_EXPIRATION + 0.5)
    for last_id in ("bogus", first_id):
        feed = Feed(server, feed_path(org), last_event_id=last_id).begin()
        wait_for(lambda f=feed: len(f.events) == 1)
        time.sleep(1.5)  # long enough for a keepalive: nothing else follows
        events = feed.stop()
        assert [e[0] for e in events] == ["start_of_history"], events
        assert ":keepalive" in feed.lines


def test_org_and_job_feeds_report_an_aborted_job(fleet, server):
    org, admin, (n1,) = fleet.setup("n1")
    feed = Feed(server, feed_path(org)).begin()
    job_id = post_job(admin, org, ["n1"])
    n1.expect("commit")
    job_feed = Feed(server, feed_path(org, job_id)).begin()
    wait_for(lambda: len(job_feed.events) == 1, nodes=(n1,))
    r = admin.post(f"/organizations/{org}/pushy/jobs/{job_id}/abort")
    assert r.status_code == 200, r.text
    n1.answer_abort()
    assert shape(job_feed.finish()) == [("start", None, None), ("job_complete", None, "aborted")]
    wait_for(lambda: len(feed.events) == 2, nodes=(n1,))
    assert _org_view(feed.stop()) == [("start", job_id, None), ("job_complete", job_id, "aborted")]
