"""The one SSE parser (``appliance.sse``): what the job feeds' readers rely on."""

from __future__ import annotations

import pytest

from appliance.sse import SseEvent, SseParser

FEED = (
    b":keepalive\n\n"
    b'event: start\nid: job-1\ndata: {"a":1}\n\n'
    b"event: quorum_vote\r\ndata: line one\r\ndata:line two\r\n: inside\r\n\r\n"
    b"retry: 2500\nid: job-3\ndata: plain\n\n"
    b"event: cr\rdata: x\r\r"
)
EVENTS = [
    SseEvent("start", "job-1", '{"a":1}'),
    SseEvent("quorum_vote", "job-1", "line one\nline two"),
    SseEvent("message", "job-3", "plain"),
    SseEvent("cr", "job-3", "x"),
]


def test_whole_feed_multiline_data_comments_crlf_and_retry() -> None:
    parser = SseParser()
    assert parser.feed_bytes(FEED) == EVENTS
    assert parser.last_id == "job-3"
    assert parser.retry_ms == 2500  # recorded, never an event


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13, 64])
def test_chunks_split_anywhere_give_the_same_events(size: int) -> None:
    parser = SseParser()
    got = []
    for i in range(0, len(FEED), size):
        got += parser.feed_bytes(FEED[i : i + size])
    assert got == EVENTS


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    parser = SseParser()
    assert parser.feed_bytes(b"data: a\r") == []
    assert parser.feed_bytes(b"") == []
    assert parser.feed_bytes(b"\n\r") == [SseEvent("message", None, "a")]
    assert parser.feed_bytes(b"\ndata: b\n\n") == [SseEvent("message", None, "b")]


def test_multibyte_character_split_between_chunks() -> None:
    data = "data: é\n\n".encode()
    parser = SseParser()
    assert parser.feed_bytes(data[:7]) == []
    assert parser.feed_bytes(data[7:]) == [SseEvent("message", None, "é")]


def test_an_event_without_data_is_dropped_and_nothing_before_the_blank_line() -> None:
    parser = SseParser()
    assert parser.feed_bytes(b"event: x\nid: 7\n\nevent: job_complete\ndata: {}\n") == []
    assert parser.feed_bytes(b"\n") == [SseEvent("job_complete", "7", "{}")]
    assert SseEvent("e", None, "").json() == {} and SseEvent("e", None, "[1]").json() == [1]


def test_restart_drops_the_unfinished_event_but_keeps_the_last_id() -> None:
    parser = SseParser()
    parser.feed_bytes(b"id: job-2\ndata: 1\n\nevent: run_st")
    parser.restart()
    assert parser.feed_bytes(b"data: 2\n\n") == [SseEvent("message", "job-2", "2")]


def test_an_overlong_line_is_refused() -> None:
    parser = SseParser(max_line_bytes=10)
    with pytest.raises(ValueError):
        parser.feed_bytes(b"data: " + b"x" * 20)
