"""The server's timers under a mock clock (issue 13): voting and run timeouts, a node going down
and coming back, the linger window, and that a restart resumes a job's timer from the log.

The real dispatcher, timers and log (tests/inproc.py); the nodes are signed messages fed to the
reactor's checks. Each test covers minutes of server time in milliseconds of real time, and
checks the state a user reads (job and node statuses) and what the nodes were sent.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from appliance.core import jobfsm
from tests.inproc import EPOCH, ORG, advance, inproc_server
from tests.support import parse_sse

VOTING = 60.0
SETTINGS = {"voting_timeout": VOTING, "heartbeat_interval": 1000.0, "wait_complete_time": 5.0}


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    """Virtual time, moved only by ``advance`` (pytest-trio runs the test on it)."""
    return trio.testing.MockClock()


async def test_a_silent_node_times_out_its_vote_at_exactly_voting_timeout(tmp_path, mock_clock):
    async with inproc_server(tmp_path, **SETTINGS) as srv:
        n1 = await srv.node("n1")
        job_id = await srv.job("n1")
        assert "commit" in n1.types()
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(n1.beat_for, VOTING + 5)  # alive, but never votes
            await advance(mock_clock, VOTING - 1)
            assert srv.status(job_id) == ("voting", {"n1": "new"})
            await advance(mock_clock, 2)
            assert srv.status(job_id) == ("quorum_failed", {"n1": "unavailable"})
            # logged at the deadline itself: the record's time is the server clock's
            finished = srv.ctx.state.jobs[job_id].finished_at
            assert finished == pytest.approx(EPOCH + started + VOTING, abs=0.01)
            assert n1.types()[-1] == "abort"  # sent to rehab by the timeout
            nursery.cancel_scope.cancel()


async def test_a_running_node_that_never_finishes_times_out_at_run_timeout(tmp_path, mock_clock):
    async with inproc_server(tmp_path, **SETTINGS) as srv:
        n1 = await srv.node("n1")
        job_id = await srv.job("n1", run_timeout=120)
        n1.job_id, n1.job_state = job_id, "committed"
        n1.send("ack_commit")
        assert srv.status(job_id) == ("running", {"n1": "ready"})
        assert n1.types()[-1] == "run"
        n1.job_state = "running"
        n1.send("ack_run")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(n1.beat_for, 200)
            await advance(mock_clock, 119)
            assert srv.status(job_id) == ("running", {"n1": "running"})
            await advance(mock_clock, 2)
            assert srv.status(job_id) == ("timed_out", {"n1": "timed_out"})
            assert n1.types()[-1] == "abort"
            nursery.cancel_scope.cancel()


async def test_a_node_that_stops_beating_goes_down_fails_its_job_and_comes_back(
    tmp_path, mock_clock
):
    async with inproc_server(tmp_path, **SETTINGS) as srv:
        n1 = await srv.node("n1")
        n2 = await srv.node("n2")
        job_id = await srv.job("n1", "n2", quorum=1)
        for node in (n1, n2):
            node.job_id, node.job_state = job_id, "committed"
            node.send("ack_commit")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(n2.beat_for, 30)  # n1 falls silent
            await advance(mock_clock, 20)
            assert srv.ctx.dispatcher.table.online((ORG, "n1")) is None
            assert (ORG, "n1") not in srv.ctx.state.up_nodes  # node_down is logged
            status, nodes = srv.status(job_id)
            assert nodes["n1"] == "crashed" and nodes["n2"] in ("running", "ready")
            assert srv.available("n2")  # untouched by n1's fall
            nursery.cancel_scope.cancel()
        # n1's client restarts: online again, sent to rehab, available once it answers
        n1.incarnation, n1.job_id, n1.job_state = "inc-2", None, "idle"
        n1.send("heartbeat")
        assert (ORG, "n1") in srv.ctx.state.up_nodes
        assert n1.types()[-1] == "abort" and not srv.available("n1")
        n1.send("aborted")
        assert srv.available("n1")


async def test_a_finished_job_lingers_for_wait_complete_time_then_is_retired(tmp_path, mock_clock):
    async with inproc_server(tmp_path, **SETTINGS) as srv:
        n1 = await srv.node("n1")
        job_id = await srv.job("n1")
        n1.job_id, n1.job_state = job_id, "committed"
        n1.send("ack_commit")
        n1.send("ack_run")
        n1.send("succeeded")
        assert srv.status(job_id) == ("complete", {"n1": "succeeded"})
        await advance(mock_clock, 4.5)
        assert job_id in srv.ctx.live  # its feed still answers with events
        await advance(mock_clock, 1)
        assert job_id not in srv.ctx.live
        assert srv.ctx.state.jobs[job_id].events == []  # only the summary is kept


async def test_a_restart_resumes_the_voting_timer_from_the_logged_start(tmp_path, mock_clock):
    async with inproc_server(tmp_path, **SETTINGS) as srv:
        n1 = await srv.node("n1")
        job_id = await srv.job("n1")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(n1.beat_for, 60)  # n1 never votes
            await advance(mock_clock, 40)  # the server stops 40 s into voting
            nursery.cancel_scope.cancel()
    async with inproc_server(tmp_path, **SETTINGS) as srv:
        assert srv.status(job_id) == ("voting", {"n1": "new"})
        assert job_id in srv.ctx.live
        await advance(mock_clock, VOTING - 40 - 1)  # the clock went on while it was "down"
        assert srv.status(job_id)[0] == "voting"
        await advance(mock_clock, 2)
        assert srv.status(job_id) == ("quorum_failed", {"n1": "unavailable"})
        assert jobfsm.job_finished(srv.ctx.state.jobs[job_id])


def feed_ids(raw: bytes) -> list[str]:
    """``event:id`` of each SSE event in a feed's bytes (tests.support's strict parser)."""
    return [f"{name}:{ident}" for name, ident, _ in parse_sse(iter(raw.decode().split("\n")))]


async def test_the_org_feed_forgets_events_older_than_org_feed_expiration(tmp_path, mock_clock):
    """A reader resuming from an event the server no longer keeps (older than
    ``org_feed_expiration``) is told ``start_of_history`` first; a recent one resumes."""
    settings = {**SETTINGS, "org_feed_expiration": 60.0}
    feed = f"/organizations/{ORG}/pushy/jobs_status_feed"
    sse = {"Accept": "text/event-stream"}
    async with inproc_server(tmp_path, http=True, **settings) as srv:
        await srv.job("gone")  # t=0: start, then quorum_failed at once (org-1, org-2)
        await advance(mock_clock, 30)
        await srv.job("gone")  # t=30: org-3, org-4
        raw = await srv.read_stream(feed, mock_clock, 1, **sse, **{"Last-Event-ID": "org-2"})
        assert feed_ids(raw) == ["start:org-3", "job_complete:org-4"]
        await advance(mock_clock, 40)  # t=71: the first job's events are past the horizon
        raw = await srv.read_stream(feed, mock_clock, 1, **sse, **{"Last-Event-ID": "org-2"})
        assert feed_ids(raw) == ["start_of_history:start_id", "start:org-3", "job_complete:org-4"]
        await advance(mock_clock, 40)  # t=112: all gone
        raw = await srv.read_stream(feed, mock_clock, 1, **sse, **{"Last-Event-ID": "org-4"})
        assert feed_ids(raw) == ["start_of_history:start_id"]
