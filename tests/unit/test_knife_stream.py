"""``pushy job start --stream``: the line assembler and prefixer, the colour decision, the
output sink's offsets (gaps filled or reported, silent streams read at the end), and the
follower printing the lines between its status lines or above its progress line."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from appliance import cli
from appliance.knife.follow import CLEAR_LINE, Follower, ProgressLine, StatusLines
from appliance.knife.output import colour_wanted
from appliance.knife.stream import (
    PALETTE,
    RESET,
    STDERR_COLOUR,
    LineAssembler,
    OutputLines,
    format_line,
    node_colour,
    prefix,
    visible,
)
from tests.unit.test_knife_jobs import JOBS, AutoClock, FeedApi, sse

# ---------------------------------------------------------------------------------------------
# pure parts


def test_prefixes_plain():
    assert prefix("web1", "stdout") == "web1:"
    assert prefix("web1", "stderr") == "web1 [stderr]:"
    assert format_line("web1", "stdout", "hello") == "web1: hello\n"
    assert format_line("web1", "stderr", "oops") == "web1 [stderr]: oops\n"
    assert format_line("web1", "stdout", "") == "web1:\n"  # no trailing blank


def test_prefixes_coloured():
    c = node_colour("web1")
    assert prefix("web1", "stdout", colour=True) == f"{c}web1:{RESET}"
    assert (
        prefix("web1", "stderr", colour=True) == f"{c}web1{RESET} {STDERR_COLOUR}[stderr]:{RESET}"
    )
    assert format_line("web1", "stdout", "x", colour=True) == f"{c}web1:{RESET} x\n"


def test_node_colours_are_stable_and_never_red():
    names = [f"node{i}" for i in range(50)]
    colours = [node_colour(n) for n in names]
    assert colours == [node_colour(n) for n in names]  # the same in every call (and run)
    assert node_colour("n1") == "\x1b[94m"  # crc32, not Python's per-process salted hash
    assert set(colours) <= set(PALETTE) and len(set(colours)) > 3
    assert STDERR_COLOUR not in PALETTE


class Tty(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    "tty, env, wanted",
    [
        (True, {}, True),
        (True, {"NO_COLOR": "1"}, False),
        (True, {"NO_COLOR": "anything"}, False),
        (True, {"NO_COLOR": ""}, True),  # set but empty: no-color.org says colour
        (False, {}, False),
        (False, {"NO_COLOR": "1"}, False),
    ],
)
def test_colour_only_on_a_terminal_and_never_with_no_color(tty, env, wanted):
    assert colour_wanted(Tty(tty), env) is wanted


def test_colour_wanted_on_odd_streams():
    assert colour_wanted(object(), {}) is False  # no isatty at all
    closed = io.StringIO()
    closed.close()
    assert colour_wanted(closed, {}) is False  # isatty raises ValueError


def test_visible_drops_crs():
    assert visible("plain") == "plain"
    assert visible("crlf\r") == "crlf"
    assert visible("10%\r50%\r100%") == "100%"  # a progress meter: its last drawing
    assert visible("\r") == ""


def test_line_assembler_holds_partial_lines_per_key():
    lines = LineAssembler()
    a, b = ("n1", "stdout"), ("n1", "stderr")
    assert lines.feed(a, "one\ntw") == ["one"]
    assert lines.feed(b, "err") == []
    assert lines.feed(a, "o\n\nthree") == ["two", ""]
    assert lines.feed(b, "or\r\n") == ["error"]
    assert lines.keys() == [a] and lines.keys("n2") == []
    assert lines.flush(a) == ["three"] and lines.flush(a) == []
    assert lines.feed(a, "") == []


def test_line_assembler_cuts_a_line_that_never_ends():
    lines = LineAssembler(max_line=4)
    key = ("n", "stdout")
    assert lines.feed(key, "abcdefghij") == ["abcd", "efgh"]
    assert lines.feed(key, "k\n") == ["ijk"]


# ---------------------------------------------------------------------------------------------
# the sink


def out(node: str, stream: str, offset: int, data: str) -> dict[str, Any]:
    return {"timestamp": "t", "node": node, "stream": stream, "offset": offset, "data": data}


class Streams:
    """A fake REST read of the streams: (node, stream) -> bytes; records the reads."""

    def __init__(self, data: dict[tuple[str, str], bytes]) -> None:
        self.data = data
        self.reads: list[tuple[str, str]] = []

    def __call__(self, node: str, stream: str) -> bytes | None:
        self.reads.append((node, stream))
        return self.data.get((node, stream))


def test_sink_prints_whole_lines_as_they_complete():
    sink = OutputLines("J")
    assert sink.event("output", out("n1", "stdout", 0, "a\nb")) == "n1: a\n"
    assert sink.event("output", out("n2", "stderr", 0, "x\n")) == "n2 [stderr]: x\n"
    assert sink.event("output", out("n1", "stdout", 3, "c\nd")) == "n1: bc\n"
    assert sink.event("quorum_vote", {"node": "n1"}) == ""
    assert sink.event("run_complete", {"node": "n1", "status": "success"}) == "n1: d\n"
    assert sink.event("output", out("n2", "stdout", 0, "tail")) == ""
    assert sink.finish({"nodes": {"succeeded": ["n1", "n2"]}}) == "n2: tail\n"


def test_sink_ignores_what_is_not_an_output_event():
    sink = OutputLines("J")
    for data in ("text", None, out("n1", "stdin", 0, "x\n"), out("n1", "stdout", -1, "x\n")):
        assert sink.event("output", data) == ""
    assert sink.event("output", {**out("n1", "stdout", 0, "x\n"), "offset": True}) == ""
    assert sink.event("output", {**out("n1", "stdout", 0, "x\n"), "data": 3}) == ""


def test_a_gap_is_read_over_rest():
    streams = Streams({("n1", "stdout"): b"one\ntwo\nthree\n"})
    sink = OutputLines("J", fetch=streams)
    # the first event never came (the feed was not open yet, or the reader fell behind)
    assert (
        sink.event("output", out("n1", "stdout", 8, "three\n")) == "n1: one\nn1: two\nn1: three\n"
    )
    assert streams.reads == [("n1", "stdout")]
    assert sink.finish({"nodes": {"succeeded": ["n1"]}}) == ""
    assert streams.reads == [("n1", "stdout"), ("n1", "stderr")]  # stderr showed nothing


def test_a_gap_that_cannot_be_read_is_reported():
    sink = OutputLines("J" * 32, fetch=Streams({}))
    assert sink.event("output", out("n1", "stderr", 0, "par")) == ""
    assert sink.event("output", out("n1", "stderr", 10, "rest\n")) == (
        "n1 [stderr]: par\n"
        f"n1 [stderr]: [pushy: 7 bytes not shown here; pushy job output {'J' * 32} n1 "
        "--channel stderr has them]\n"
        "n1 [stderr]: rest\n"
    )


def test_a_large_gap_is_reported_without_reading_the_stream():
    streams = Streams({("n1", "stdout"): b"x" * 100})
    sink = OutputLines("J", fetch=streams, fill_limit=50)
    text = sink.event("output", out("n1", "stdout", 90, "x\n"))
    assert "[pushy: 90 bytes not shown here; pushy job output J n1 has them]" in text
    assert streams.reads == []
    sink = OutputLines("J", fetch=streams, max_fills=0)
    assert "90 bytes not shown" in sink.event("output", out("n1", "stdout", 90, "x\n"))


def test_text_longer_than_its_bytes_is_no_gap():
    # a truncation marker (not counted in the offsets) or replaced invalid UTF-8
    streams = Streams({})
    sink = OutputLines("J", fetch=streams)
    assert sink.event("output", out("n1", "stdout", 0, "\ufffd\n")) == "n1: \ufffd\n"
    assert sink.event("output", out("n1", "stdout", 2, "é\n")) == "n1: é\n"
    assert streams.reads == []


def test_silent_streams_of_a_small_job_are_read_at_the_end():
    streams = Streams({("n1", "stdout"): b"fast\n", ("n2", "stderr"): b"no newline"})
    sink = OutputLines("J", fetch=streams)
    job = {"nodes": {"succeeded": ["n1", "n2"], "nacked": ["n3"], "unavailable": ["n4"]}}
    assert sink.finish(job) == "n1: fast\nn2 [stderr]: no newline\n"
    assert sorted(streams.reads) == [(n, s) for n in ("n1", "n2") for s in ("stderr", "stdout")]
    # a large job: no reads (two per node)
    streams = Streams({("n1", "stdout"): b"fast\n"})
    sink = OutputLines("J", fetch=streams, catch_up_nodes=1)
    assert sink.finish(job) == "" and streams.reads == []
    assert OutputLines("J").finish(job) == ""  # nothing to read with


# ---------------------------------------------------------------------------------------------
# the displays and the follower


def test_status_lines_put_other_lines_on_lines_of_their_own():
    buf = io.StringIO()
    display = StatusLines(buf, dots=True)
    display.before_poll()
    display.print_above("n1: a\n")
    display.before_poll()
    display.update({"status": "voting", "nodes": {}}, 0)
    display.print_above("n1: b\n")
    assert buf.getvalue() == ".\nn1: a\n.Voting.\nn1: b\n"


def test_the_progress_line_is_cleared_for_other_lines_then_redrawn():
    buf = io.StringIO()
    display = ProgressLine(buf, width=80)
    running = {"status": "running", "nodes": {"running": ["a"]}}
    display.update(running, 0.0)
    display.print_above("a: one\na: two\n")
    display.tick(0.01)  # at once, not REDRAW_SECONDS later
    display.finish({"status": "complete", "nodes": {"succeeded": ["a"]}}, 0.02)
    assert buf.getvalue().split(CLEAR_LINE) == [
        "",
        "Running  0s  running 1  waiting for: a",
        "a: one\na: two\n",
        "Running  0s  running 1  waiting for: a",
        "Complete  0s  succeeded 1\n",
    ]


def output_sse(node: str, stream: str, offset: int, data: str) -> bytes:
    return f"event: output\ndata: {json.dumps(out(node, stream, offset, data))}\n\n".encode()


def run_complete(n: int, node: str) -> bytes:
    return sse(n, "run_complete", json.dumps({"node": node, "status": "success"}))


def test_the_follower_prints_the_output_between_the_status_lines():
    feed = b"".join(
        [
            *(output_sse("n1", "stdout", 4 * i, f"l{i:02d} ") for i in range(100)),
            output_sse("n1", "stdout", 400, "\n"),
            output_sse("n1", "stderr", 0, "oops\n"),
            output_sse("n1", "stderr", 5, "no newline"),
            run_complete(1, "n1"),
            sse(2, "job_complete"),
        ]
    )
    api, clock, buf = FeedApi([JOBS[0], JOBS[-1]], [feed]), AutoClock(), io.StringIO()
    gets_at: list[int] = []  # the GETs made so far at each event

    class Sink(OutputLines):
        def event(self, name: str, data: Any) -> str:
            gets_at.append(len(api.gets))
            return super().event(name, data)

    sink = Sink("j" * 32)
    follower = Follower(api, "j" * 32, out=buf, clock=clock, sleep=clock.sleep, output=sink)
    job = follower.run()
    assert job["status"] == "complete" and follower.used_feed
    line = "".join(f"l{i:02d} " for i in range(100))
    assert buf.getvalue() == (
        f"Voting.\nn1: {line}\nn1 [stderr]: oops\nn1 [stderr]: no newline\nComplete.\n"
    )
    # the output events (longer than COALESCE_SECONDS of this clock) make no GET of the job
    assert gets_at[:104] == [1] * 104 and len(api.gets) == 2, gets_at  # 103 output, run_complete


class JumpClock(AutoClock):
    """Every reading moves time on a quarter second: the job is fetched after each event."""

    def __call__(self) -> float:
        self.now += 0.25
        return self.now


def test_output_left_in_the_feed_when_the_job_is_final_is_still_printed():
    # the job is final at the GET after "start": the output queued behind it is read on
    feed = sse(1, "start") + output_sse("n1", "stdout", 0, "late\n") + sse(2, "job_complete")
    api, clock, buf = FeedApi([JOBS[0], JOBS[-1]], [feed]), JumpClock(), io.StringIO()
    follower = Follower(
        api, "j" * 32, out=buf, clock=clock, sleep=clock.sleep, output=OutputLines("j" * 32)
    )
    follower.run()
    assert buf.getvalue() == "Voting.\nn1: late\nComplete.\n"


def test_stream_is_refused_with_poll_or_nowait(capsys):
    for option in ("--poll", "--nowait"):
        code = cli.main(["job", "start", "--stream", option, "cmd", "n1"])
        assert code == 100
        assert "--stream reads the job's event feed" in capsys.readouterr().err
