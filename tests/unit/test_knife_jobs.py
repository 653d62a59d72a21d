"""The pure parts of ``pushy job``: quorum, request body, status line, exit code, SSE parsing,
progress rendering, and knife's text formatter (client-knife.md §B, §D 20–25)."""

from __future__ import annotations

import io
import json
import urllib.parse
from typing import Any

import pytest

from appliance.knife import follow
from appliance.knife.follow import (
    CLEAR_LINE,
    Follower,
    ProgressLine,
    StatusLines,
    exit_code,
    progress_line,
    status_line,
)
from appliance.knife.jobs import (
    file_field,
    job_body,
    job_id_of,
    parse_env,
    parse_quorum,
    parse_share,
    shown,
    watch_line,
)
from appliance.knife.nodes import search_node_names
from appliance.knife.output import format_json, format_text
from appliance.knife.session import ApiError, CliError
from appliance.signedhttp import Reply
from appliance.sse import SseEvent, SseParser

# ---------------------------------------------------------------------------------------------
# job start: quorum, body, file, env


@pytest.mark.parametrize(
    ("text", "count", "quorum"),
    [
        ("100%", 3, 3),
        ("50%", 3, 2),
        ("1%", 3, 1),
        ("2", 3, 2),
        ("0%", 3, 0),
        ("90%", 10, 9),
        ("7%", 100, 7),  # exact: knife's float arithmetic would give 8
        ("150%", 2, 3),
        ("5", 1, 5),  # more than the nodes: sent as is (the job ends quorum_failed)
    ],
)
def test_quorum_table(text, count, quorum):
    assert parse_quorum(text, count) == quorum


@pytest.mark.parametrize("text", ["abc", "50.5%", "", "%", "-1", "5 ", " 5", "5%%", "1e2", "٥"])
def test_bad_quorum_is_knifes_error_exit_100(text):
    with pytest.raises(CliError) as err:
        parse_quorum(text, 3)
    assert err.value.message == "Invalid Format please enter integer or percent"
    assert err.value.code == 100


def test_body_keys_in_knifes_order():
    body = job_body(
        "chef-client",
        ["n1", "n2"],
        2,
        file="raw:x",
        capture=True,
        env={"A": "b"},
        directory="/tmp",
        user="daemon",
        run_timeout=300,
    )
    assert list(body) == [
        "command",
        "nodes",
        "quorum",
        "file",
        "capture_output",
        "env",
        "dir",
        "user",
        "run_timeout",
    ]
    assert body == {
        "command": "chef-client",
        "nodes": ["n1", "n2"],
        "quorum": 2,
        "file": "raw:x",
        "capture_output": True,
        "env": {"A": "b"},
        "dir": "/tmp",
        "user": "daemon",
        "run_timeout": 300,
    }


def test_rolling_limits_come_last_as_given():
    body = job_body("ls", ["n1"], 1, run_timeout=9, max_concurrency="25%", max_errors=0)
    assert list(body)[-3:] == ["run_timeout", "max_concurrency", "max_errors"]
    assert body["max_concurrency"] == "25%" and body["max_errors"] == 0


@pytest.mark.parametrize(("text", "sent"), [("10", 10), ("0", 0), ("25%", "25%"), ("100%", "100%")])
def test_rolling_limits_are_sent_as_counts_or_percentages(text, sent):
    assert parse_share(text, "--max-concurrency") == sent


@pytest.mark.parametrize("text", ["", "%", "1.5", "-1", "ten", "5 %", "٥", "5%%"])
def test_a_bad_rolling_limit_names_the_option_exit_100(text):
    with pytest.raises(CliError) as err:
        parse_share(text, "--max-errors")
    assert err.value.message.startswith("--max-errors takes a count") and err.value.code == 100


def test_minimal_body_always_has_capture_output_false_and_no_run_timeout():
    body = job_body("ls", ["n1"], 1)
    assert list(body.items()) == [
        ("command", "ls"),
        ("nodes", ["n1"]),
        ("quorum", 1),
        ("capture_output", False),
    ]
    assert list(job_body("ls", ["n1"], 1, env={}))[-1] == "env"  # an empty object is still sent
    assert job_body("ls", ["n1"], 1, run_timeout=0)["run_timeout"] == 0


def test_file_is_raw_text_when_utf8_else_base64():
    assert file_field(b"hello\nworld") == "raw:hello\nworld"
    assert file_field("héllo".encode()) == "raw:héllo"
    assert file_field(b"a:b:c") == "raw:a:b:c"
    assert file_field(b"") == "raw:"
    assert file_field(b"\xff\x00\xfe") == "base64:/wD+"


def test_env_must_be_a_json_object():
    assert parse_env('{"test": "foo"}') == {"test": "foo"}
    assert parse_env("{}") == {}
    for text, words in [
        ('["A=b"]', "not a array"),
        ('"A=b"', "not a str"),
        ("3", "not a int"),
        ("null", "not a NoneType"),
        ("{nope", "not valid JSON"),
        ("", "not valid JSON"),
    ]:
        with pytest.raises(CliError) as err:
            parse_env(text)
        assert err.value.code == 1 and "--with-env" in err.value.message
        assert words in err.value.message


def test_job_id_is_the_last_32_characters_of_the_uri():
    uri = "https://h/organizations/o/pushy/jobs/26e98ba162fa7ba6fb2793125553c7ae"
    assert job_id_of({"uri": uri}) == "26e98ba162fa7ba6fb2793125553c7ae"
    with pytest.raises(CliError):
        job_id_of(["nope"])


# ---------------------------------------------------------------------------------------------
# status line and exit code


@pytest.mark.parametrize(
    ("status", "nodes", "line", "final"),
    [
        ("new", {"new": ["a"]}, "Initialized.", False),
        ("voting", {"new": ["a"], "ready": ["b"]}, "Voting.", False),
        # knife counts node-state keys, not nodes (kept): 1 key of 3 nodes
        (
            "running",
            {"running": ["a", "b"], "succeeded": ["c"]},
            "Running (1/3 in progress) ...",
            False,
        ),
        ("running", {"new": ["a"], "running": ["b", "c"]}, "Running (2/3 in progress) ...", False),
        ("running", {"ready": ["a"]}, "Running (0/1 in progress) ...", False),  # ready: no key
        ("complete", {"succeeded": ["a"]}, "Complete.", True),
        ("quorum_failed", {}, "Quorum_failed.", True),
        ("timed_out", {}, "Timed_out.", True),
        ("aborted", {}, "Aborted.", True),
        ("crashed", {}, "Crashed.", True),
    ],
)
def test_status_lines(status, nodes, line, final):
    assert status_line({"status": status, "nodes": nodes}) == (line, final)


@pytest.mark.parametrize(
    ("status", "nodes", "knife", "strict"),
    [
        ("complete", {"succeeded": ["a", "b"]}, 0, 0),
        ("complete", {"succeeded": ["a"], "nacked": ["b"]}, 0, 1),
        ("complete", {"succeeded": ["a"], "unavailable": ["b"]}, 0, 1),
        ("complete", {"nacked": ["a"], "unavailable": ["b"]}, 0, 1),
        ("complete", {"succeeded": ["a"], "failed": ["b"]}, 1, 1),
        ("complete", {"crashed": ["a"]}, 1, 1),
        ("complete", {"aborted": ["a"]}, 1, 1),
        ("quorum_failed", {"unavailable": ["a"], "was_ready": ["b"]}, 1, 1),
        ("timed_out", {"succeeded": ["a"]}, 1, 1),
        ("aborted", {"succeeded": ["a"]}, 1, 1),
        ("running", {"succeeded": ["a"]}, 1, 1),
    ],
)
def test_exit_codes(status, nodes, knife, strict):
    job = {"status": status, "nodes": nodes}
    assert exit_code(job) == knife
    assert exit_code(job, strict=True) == strict


# ---------------------------------------------------------------------------------------------
# SSE parsing


def test_sse_parser_events_ids_comments_and_multiline_data():
    parser = SseParser()
    lines = [
        ":keepalive\n",
        "\n",  # a comment then a blank line: no event
        "event: start\n",
        "id: job-1\n",
        'data: {"a":1}\n',
        "\n",
        "event: quorum_vote\r\n",
        "data: line one\r\n",
        "data:line two\r\n",
        ": a comment inside an event\r\n",
        "\r\n",
        "id: job-3\n",
        "event: no_data\n",
        "\n",  # no data: dropped, but the id sticks
        "data: plain\n",
        "retry: 2500\n",
        "\n",
        "event: x\n",
        "id\n",  # a field without colon: empty id
        "data\n",  # empty data line
        "data: \n",
        "\n",
    ]
    events = parser.feed_all(lines)
    assert events == [
        SseEvent("start", "job-1", '{"a":1}'),
        SseEvent("quorum_vote", "job-1", "line one\nline two"),
        SseEvent("message", "job-3", "plain"),
        SseEvent("x", "", "\n"),
    ]
    assert events[0].json() == {"a": 1}
    assert events[2].json() == "plain"
    assert parser.retry_ms == 2500


def test_sse_parser_does_not_emit_before_the_blank_line():
    parser = SseParser()
    assert parser.feed("event: job_complete") is None
    assert parser.feed('data: {"status":"complete"}') is None
    assert parser.feed("") == SseEvent("job_complete", None, '{"status":"complete"}')


def test_watch_lines():
    event = SseEvent("run_start", "job-4", '{"node":"n1"}')
    assert watch_line(event, "summary") == 'run_start  job-4  {"node":"n1"}'
    assert watch_line(event, "json") == (
        '{"event": "run_start", "id": "job-4", "data": {"node": "n1"}}'
    )


# ---------------------------------------------------------------------------------------------
# progress rendering


def test_progress_line_running_and_final():
    job = {
        "status": "running",
        "nodes": {"succeeded": ["s1"], "running": ["r2", "r1"], "new": ["n1"], "ready": ["y1"]},
    }
    assert progress_line(job, 12.4, width=120) == (
        "Running  12s  new 1, ready 1, running 2, succeeded 1  waiting for: n1, r1, r2 +1"
    )
    assert progress_line(job, 12.4, width=120, shown=10).endswith("waiting for: n1, r1, r2, y1")
    done = {"status": "complete", "nodes": {"succeeded": ["a", "b"], "failed": ["c"]}}
    assert progress_line(done, 3.6) == "Complete  4s  succeeded 2, failed 1"
    assert progress_line({"status": "voting", "nodes": {}}, 0) == "Voting  0s"


def test_progress_line_never_wraps():
    job = {"status": "running", "nodes": {"running": [f"node-{i:04d}" for i in range(500)]}}
    line = progress_line(job, 1, width=40)
    assert len(line) == 39 and line.endswith("...")


def test_progress_display_redraws_in_place_at_most_ten_times_a_second():
    out = io.StringIO()
    display = ProgressLine(out, width=80)
    running = {"status": "running", "nodes": {"running": ["a"]}}
    display.update({"status": "voting", "nodes": {"new": ["a"]}}, 0.0)
    display.update(running, 0.05)  # too soon: not drawn yet
    assert out.getvalue() == CLEAR_LINE + "Voting  0s  new 1  waiting for: a"
    display.tick(0.15)  # now it is
    display.tick(0.3)  # nothing changed, the clock shows the same second
    display.tick(1.2)  # a second later: the clock moved
    display.finish({"status": "complete", "nodes": {"succeeded": ["a"]}}, 1.6)
    frames = out.getvalue().split(CLEAR_LINE)
    assert frames == [
        "",
        "Voting  0s  new 1  waiting for: a",
        "Running  0s  running 1  waiting for: a",
        "Running  1s  running 1  waiting for: a",
        "Complete  2s  succeeded 1\n",
    ]


def test_status_lines_display_prints_changes_only():
    out = io.StringIO()
    display = StatusLines(out, dots=True)
    for status, nodes in [
        ("new", {"new": ["a"]}),
        ("voting", {"new": ["a"]}),
        ("voting", {"ready": ["a"]}),
        ("running", {"running": ["a"]}),
        ("running", {"running": ["a"]}),
        ("complete", {"succeeded": ["a"]}),
    ]:
        display.before_poll()
        display.update({"status": status, "nodes": nodes}, 0)
    display.finish({"status": "complete", "nodes": {"succeeded": ["a"]}}, 0)
    assert out.getvalue() == "..Voting.\n..Running (1/1 in progress) ...\n..Complete.\n"


# ---------------------------------------------------------------------------------------------
# the follower, with a fake API and clock


class FakeApi:
    """Answers GET job with the given sequence (the last one repeats); no event feed."""

    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs = list(jobs)
        self.gets: list[str] = []
        self.streams = 0

    def org_path(self, relative: str) -> str:
        return f"/organizations/o/{relative}"

    def get(self, path: str) -> dict[str, Any]:
        self.gets.append(path)
        return self.jobs.pop(0) if len(self.jobs) > 1 else self.jobs[0]

    def stream(self, path: str, **kw: Any) -> Any:
        self.streams += 1
        raise ApiError(404, {"error": "no such route"}, "GET", path)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


JOBS = [
    {"status": "voting", "nodes": {"new": ["a"]}, "run_timeout": 60},
    {"status": "running", "nodes": {"running": ["a"]}, "run_timeout": 60},
    {"status": "running", "nodes": {"running": ["a"]}, "run_timeout": 60},
    {"status": "complete", "nodes": {"succeeded": ["a"]}, "run_timeout": 60},
]


def test_poll_mode_is_knifes_loop_and_output():
    api, clock, out = FakeApi(JOBS), FakeClock(), io.StringIO()
    follower = Follower(
        api, "j" * 32, out=out, poll_interval=1.0, poll=True, clock=clock, sleep=clock.sleep
    )
    job = follower.run()
    assert job["status"] == "complete" and api.streams == 0
    assert out.getvalue() == ".Voting.\n.Running (1/1 in progress) ...\n..Complete.\n"
    assert api.gets == [f"/organizations/o/pushy/jobs/{'j' * 32}"] * 4
    assert clock.now == pytest.approx(4.0)


def test_without_a_feed_the_follower_polls_without_dots():
    api, clock, out = FakeApi(JOBS), FakeClock(), io.StringIO()
    follower = Follower(api, "j" * 32, out=out, clock=clock, sleep=clock.sleep)
    job = follower.run()
    assert job["status"] == "complete" and api.streams == 1 and not follower.used_feed
    assert out.getvalue() == "Voting.\nRunning (1/1 in progress) ...\nComplete.\n"


def test_following_gives_up_after_the_jobs_run_timeout_plus_slack():
    stuck = [{"status": "running", "nodes": {"running": ["a"]}, "run_timeout": 10}]
    api, clock = FakeApi(stuck), FakeClock()
    follower = Follower(
        api,
        "j" * 32,
        out=io.StringIO(),
        poll=True,
        poll_interval=60,
        clock=clock,
        sleep=clock.sleep,
    )
    with pytest.raises(CliError) as err:
        follower.run()
    assert err.value.code == 1 and "still running" in err.value.message
    assert clock.now <= 10 + follow.FOLLOW_SLACK_SECONDS + 120


# ---------------------------------------------------------------------------------------------
# knife's text formatter


JOB = {
    "nodes": {"succeeded": ["node1"]},
    "id": "26e98ba162fa7ba6fb2793125553c7ae",
    "command": "chef-client",
    "status": "complete",
    "run_timeout": 3600,
    "created_at": "Tue, 04 Sep 2012 23:01:02 GMT",
    "updated_at": "Tue, 04 Sep 2012 23:01:05 GMT",
}


def test_text_formatter_on_the_knife_example():
    assert format_text(JOB) == (
        "command:     chef-client\n"
        "created_at:  Tue, 04 Sep 2012 23:01:02 GMT\n"
        "id:          26e98ba162fa7ba6fb2793125553c7ae\n"
        "nodes:\n"
        "  succeeded: node1\n"
        "run_timeout: 3600\n"
        "status:      complete\n"
        "updated_at:  Tue, 04 Sep 2012 23:01:05 GMT\n"
    )


def test_text_formatter_nested_lists_and_scalars():
    job = {
        "nodes": {"succeeded": ["a", "b"], "failed": ["c"]},
        "capture_output": True,
        "env": {},
        "user": None,
    }
    assert format_text(job) == (
        "capture_output: true\n"
        "env:\n"
        "nodes:\n"
        "  failed:    c\n"
        "  succeeded:\n"
        "    a\n"
        "    b\n"
        "user:           \n"
    )


def test_text_formatter_arrays_of_hashes_and_plain_values():
    assert format_text([{"id": "1", "status": "complete"}, {"id": "22", "command": "x"}]) == (
        "id:     1\nstatus: complete\n\ncommand: x\nid:      22\n"
    )
    assert format_text({"jobs": [{"a": 1}, {"b": 2}]}) == "jobs:\n  a: 1\n  \n  b: 2\n"
    assert format_text(["x", "y"]) == "x\ny\n"
    assert format_text("testout\n") == "testout\n\n"  # knife's extra newline on job output
    assert format_text([]) == ""
    assert format_text({"a": 1}, color=True) == "\x1b[36ma:\x1b[0m 1\n"


def test_json_format_is_pretty():
    assert format_json({"b": [1], "a": "é"}) == '{\n  "b": [\n    1\n  ],\n  "a": "é"\n}\n'


class FeedApi(FakeApi):
    """An event feed that drops after the first two events; the resumed request gets the rest."""

    def __init__(self, jobs: list[dict[str, Any]], pieces: list[bytes]) -> None:
        super().__init__(jobs)
        self.pieces = list(pieces)
        self.last_ids: list[str | None] = []

    def stream(self, path: str, *, last_event_id: str | None = None, **kw: Any) -> Any:
        self.last_ids.append(last_event_id)
        if not self.pieces:
            raise ApiError(204, "", "GET", path)
        return FakeStream(self.pieces.pop(0))


class FakeStream:
    """A `signedhttp.Stream` whose body arrives in a few small chunks, then ends."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def chunks(self) -> Any:
        for i in range(0, len(self.data), 7):
            yield self.data[i : i + 7]

    def interrupt(self) -> None:
        pass

    def close(self) -> None:
        pass


def sse(n: int, name: str, data: str = "{}") -> bytes:
    return f"event: {name}\nid: job-{n}\ndata: {data}\n\n".encode()


def test_event_stream_resumes_with_last_event_id_after_a_drop():
    first = sse(1, "start") + sse(2, "quorum_vote") + b"event: run_st"  # cut mid-event
    second = sse(3, "run_start") + b":keepalive\n\n" + sse(4, "job_complete")
    api = FeedApi(JOBS, [first, second])
    stream = follow.EventStream(api, "/feed").start()
    got = []
    for _ in range(50):
        item = stream.get(5)
        assert item is not None, got
        got.append((item[0], item[1].event if item[0] == "event" else None))
        if item[0] == "ended":
            break
    stream.close()
    assert got == [
        ("event", "start"),
        ("event", "quorum_vote"),
        ("dropped", None),
        ("event", "run_start"),
        ("event", "job_complete"),
        ("ended", None),
    ]
    assert api.last_ids == [None, "job-2"]


def test_event_stream_without_a_feed_is_unavailable():
    api = FeedApi(JOBS, [])
    stream = follow.EventStream(api, "/feed").start()
    kind, error = stream.get(5)
    assert kind == "unavailable" and isinstance(error, ApiError) and error.status == 204


class AutoClock(FakeClock):
    """Every reading moves time on a little, so that waits end without real time passing."""

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


def test_following_the_feed_coalesces_events_into_few_gets(monkeypatch):
    consumed: list[str] = []
    gets_after: list[int] = []  # events the follower had taken when it sent each GET

    class CountingStream(follow.EventStream):
        def get(self, timeout: float) -> Any:
            item = super().get(timeout)
            if item is not None and item[0] == "event":
                consumed.append(item[1].event)
            return item

    class CountingApi(FeedApi):
        def get(self, path: str) -> dict[str, Any]:
            gets_after.append(len(consumed))
            return super().get(path)

    monkeypatch.setattr(follow, "EventStream", CountingStream)
    events = b"".join(sse(n, "quorum_vote") for n in range(1, 30)) + sse(30, "job_complete")
    api, clock, out = CountingApi([JOBS[0], JOBS[-1]], [events]), AutoClock(), io.StringIO()
    follower = Follower(api, "j" * 32, out=out, clock=clock, sleep=clock.sleep)
    job = follower.run()
    assert job["status"] == "complete" and follower.used_feed
    assert gets_after[0] == 0 and gets_after[1] >= 10, gets_after  # not one GET per event
    assert out.getvalue() == "Voting.\nComplete.\n"


# ---------------------------------------------------------------------------------------------
# node search: every page, knife's error


class SearchApi(FakeApi):
    def __init__(self, names: list[str], status: int = 200) -> None:
        super().__init__([{}])
        self.names = names
        self.status = status
        self.queries: list[dict[str, list[str]]] = []

    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Reply:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        self.queries.append(query)
        if self.status != 200:
            data = json.dumps({"error": ["bad query near '('"]}).encode()
            return Reply(self.status, "application/json", data, {})
        start, rows = int(query["start"][0]), int(query["rows"][0])
        page = [{"name": n, "chef_type": "node"} for n in self.names[start : start + rows]]
        data = json.dumps({"total": len(self.names), "start": start, "rows": page}).encode()
        return Reply(200, "application/json", data, {})


def test_search_reads_every_page():
    api = SearchApi(["a", "b", "c", "d", "e"])
    assert search_node_names(api, "role:web AND name:*", page_rows=2) == ["a", "b", "c", "d", "e"]
    assert [q["start"] for q in api.queries] == [["0"], ["2"], ["4"]]
    assert api.queries[0]["q"] == ["role:web AND name:*"]
    assert search_node_names(SearchApi([]), "x:y") == []


def test_search_4xx_is_knifes_error_exit_1():
    with pytest.raises(CliError) as err:
        search_node_names(SearchApi([], status=400), "role:(web")
    assert err.value.code == 1
    assert err.value.message == "knife search failed: bad query near '('"
    with pytest.raises(ApiError) as err:
        search_node_names(SearchApi([], status=500), "role:web")
    assert err.value.code == 100


def test_text_output_shows_only_the_nodes_that_did_not_simply_exit_0():
    ok = {"exit_status": 0, "signal": None, "reason": None}
    job = {"id": "j", "node_details": {"a": ok, "b": ok}}
    assert shown(job, "summary") == {"id": "j"}  # as knife prints it
    job["node_details"]["c"] = {"exit_status": None, "signal": None, "reason": "lock held"}
    job["node_details"]["d"] = {"exit_status": 3, "signal": None, "reason": None}
    assert shown(job, "text")["node_details"] == {
        "c": {"reason": "lock held"},
        "d": {"exit_status": 3},
    }
    assert shown(job, "json") is job  # the server's JSON, whole
    assert shown({"id": "j"}, "text") == {"id": "j"}
