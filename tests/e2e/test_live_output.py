"""Live output end to end (issue 15): real ``pushy client`` processes send their commands'
output while the commands run; the job feed, the websocket-free REST read and the files the
server keeps are checked against what the commands printed, through an abort, a truncation
and a ``kill -9`` of the server."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.e2e.helpers import Feed
from tests.support import ClientFleet, Server, wait_for

ORG = "live"
LIMIT = 5000  # max_output_bytes of this module's server
MARKER = f"[pushy: output truncated at {LIMIT} bytes; the rest was not kept]"


def whitelist(work: Path) -> str:
    return (
        "{"
        # a line every 0.3 s, then a mark that it ended
        + r"/^tick ([0-9]+)$/=>'for i in $(seq 1 \1); do echo line $i; sleep 0.3; done; "
        + f"touch {work}/$CHEF_PUSH_JOB_ID.done', "
        + r"""/^big ([0-9]+)$/=>'printf "%0\1d" 0 | tr 0 x; printf "%0\1d" 0 | tr 0 e >&2', """
        + "'hang'=>'echo started; echo oops >&2; sleep 120', "
        + r"""'utf8'=>'printf "caf\303\251 \342\202\254\n"'"""
        + "}"
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("liveoutput")


@pytest.fixture(scope="module")
def fleet(work):
    # a 1 s heartbeat: a client notices a restart only after 3 s, longer than the restart
    server = Server(work / "state", heartbeat_interval=1000, max_output_bytes=LIMIT).start()
    fleet = ClientFleet(server, ORG, work / "clients")
    try:
        fleet.add("n1", whitelist=whitelist(work))
        fleet.add("n2", whitelist=whitelist(work))
        fleet.add("small", whitelist=whitelist(work), extra="max_body_size 2000\n")
        fleet.wait_available(*fleet.clients)
        yield fleet
    finally:
        fleet.close()
        fleet.server.kill()


def output(fleet: ClientFleet, job_id: str, node: str, channel: str = "stdout") -> bytes:
    r = fleet.output(job_id, node, channel)
    assert r.status_code == 200, r.text
    return r.content


def arrived(fleet: ClientFleet, job_id: str, node: str) -> bytes | None:
    """The node's stdout so far; None until it runs (404)."""
    r = fleet.output(job_id, node, "stdout")
    return r.content if r.status_code == 200 else None


def output_events(feed: Feed) -> list[dict]:
    return [data for name, _, data in feed.events if name == "output"]


def test_output_reaches_the_feed_and_rest_while_the_command_runs(work, fleet):
    server = fleet.server
    job_id = fleet.post("tick 8", ["n1", "n2"], capture_output=True)
    feed = Feed(server, f"/organizations/{ORG}/pushy/job_status_feed/{job_id}", seconds=60)
    feed.start()
    done = work / f"{job_id}.done"

    def seen_line_2() -> bool:
        return any("line 2" in e["data"] for e in output_events(feed))

    wait_for(seen_line_2, 30, what="line 2 in the feed")
    assert not done.exists(), "the command ended before its output was seen"
    assert fleet.job(job_id)["status"] == "running"
    partial = output(fleet, job_id, "n1")  # what arrived so far, while it runs
    assert partial.startswith(b"line 1\n") and b"line 8" not in partial
    job = fleet.wait_job(job_id)
    feed.join(30)
    assert job["nodes"] == {"succeeded": ["n1", "n2"]}
    expected = "".join(f"line {i}\n" for i in range(1, 9))
    for node in ("n1", "n2"):
        assert output(fleet, job_id, node) == expected.encode()
        events = [e for e in output_events(feed) if e["node"] == node]
        assert all(e["stream"] == "stdout" for e in events)
        # the offsets count the bytes before each event's data: together they are the stream
        text, at = "", 0
        for e in events:
            assert e["offset"] == at, events
            text += e["data"]
            at += len(e["data"].encode())
        assert text == expected
    names = [name for name, _, _ in feed.events]
    assert names.index("output") < names.index("job_complete")
    # output events carry no id (not replayed); every other event keeps its job-N id
    assert all((ident == "") == (name == "output") for name, ident, _ in feed.events)


def test_output_larger_than_a_message_arrives_whole(fleet):
    # max_body_size 2000: the client cuts its chunks to fit (the original cut the output)
    job = fleet.run("big 3000", ["small"], capture_output=True)
    assert job["nodes"] == {"succeeded": ["small"]}
    assert output(fleet, job["id"], "small") == b"x" * 3000
    assert output(fleet, job["id"], "small", "stderr") == b"e" * 3000


def test_past_max_output_bytes_the_stream_ends_with_a_marker(fleet):
    job = fleet.run("big 40000", ["n1"], capture_output=True)
    assert job["nodes"] == {"succeeded": ["n1"]}
    for channel, char in (("stdout", b"x"), ("stderr", b"e")):
        text = output(fleet, job["id"], "n1", channel)
        assert text == char * LIMIT + b"\n" + MARKER.encode() + b"\n"


def test_utf8_is_kept_and_shown_as_text(fleet):
    job = fleet.run("utf8", ["n1"], capture_output=True)
    assert output(fleet, job["id"], "n1") == "café €\n".encode()


def test_partial_output_survives_an_abort(fleet):
    job_id = fleet.post("hang", ["n2"], capture_output=True)
    wait_for(lambda: arrived(fleet, job_id, "n2") == b"started\n", 30, what="the first line")
    r = fleet.admin.post(f"/organizations/{ORG}/pushy/jobs/{job_id}/abort")
    assert r.status_code == 200, r.text
    job = fleet.wait_job(job_id)
    assert job["status"] == "aborted"
    assert output(fleet, job_id, "n2") == b"started\n"
    assert output(fleet, job_id, "n2", "stderr") == b"oops\n"
    fleet.wait_available("n2")


def test_partial_output_survives_kill_9_of_the_server(fleet):
    server = fleet.server
    job_id = fleet.post("hang", ["n1"], capture_output=True, run_timeout=8)
    wait_for(lambda: arrived(fleet, job_id, "n1") == b"started\n", 30, what="the first line")
    ports = {k: server.ports[k] for k in ("api_port", "command_port", "server_heartbeat_port")}
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(30)
    server.settings.update(ports)
    server.start()
    assert output(fleet, job_id, "n1") == b"started\n"  # read back from disk
    job = fleet.wait_job(job_id, seconds=60)
    assert job["status"] in ("timed_out", "crashed", "aborted"), job
    assert output(fleet, job_id, "n1") == b"started\n"
    assert output(fleet, job_id, "n1", "stderr") == b"oops\n"
    fleet.wait_available("n1", seconds=60)
