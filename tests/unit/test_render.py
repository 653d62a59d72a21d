"""REST and SSE shapes: key order, timestamps, SSE framing, job ids."""

from __future__ import annotations

import calendar
import enum
import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.core.render import (
    error_body,
    error_list,
    job_detail,
    job_summary,
    make_job_id,
    node_state,
    node_state_item,
    org_event_data,
    rfc1123,
    sse_comment_keepalive,
    sse_event,
    sse_timestamp,
)

_relaxed = settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
T0 = calendar.timegm((2012, 9, 4, 23, 1, 2))  # Tue, 04 Sep 2012 23:01:02 GMT


@dataclass
class FakeJob:
    id: str = "aaaaaaaaaaaa25fd67fa8715fd547d3d"
    command: str = "chef-client"
    status: object = "running"
    run_timeout: int = 300
    created_at: float = T0 + 0.75
    updated_at: float = T0 + 1014.2
    user: str | None = None
    dir: str | None = None
    env: dict[str, str] | None = None
    file: str | None = None
    capture: bool = False
    nodes: dict[str, object] = field(default_factory=dict)
    quorum: int = 1


class Status(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


# ---- timestamps ----


def test_rfc1123_example_from_the_docs() -> None:
    assert rfc1123(T0) == "Tue, 04 Sep 2012 23:01:02 GMT"


def test_rfc1123_floors_to_the_second() -> None:
    assert rfc1123(T0 + 0.999999) == "Tue, 04 Sep 2012 23:01:02 GMT"
    assert rfc1123(T0 - 0.000001) == "Tue, 04 Sep 2012 23:01:01 GMT"


def test_rfc1123_pads_day_and_handles_year_boundary() -> None:
    assert rfc1123(calendar.timegm((2015, 1, 1, 0, 0, 0))) == "Thu, 01 Jan 2015 00:00:00 GMT"
    assert rfc1123(calendar.timegm((2014, 12, 31, 23, 59, 59))) == "Wed, 31 Dec 2014 23:59:59 GMT"
    assert rfc1123(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


def test_rfc1123_ignores_the_local_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "XYZ+5")  # POSIX form: needs no tz database
    time.tzset()
    try:
        assert time.localtime(T0).tm_hour == 18  # the zone really is in effect
        assert rfc1123(T0) == "Tue, 04 Sep 2012 23:01:02 GMT"
        assert sse_timestamp(T0) == "2012-09-04 23:01:02.000000Z"
    finally:
        monkeypatch.undo()
        time.tzset()


@_relaxed
@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_rfc1123_parses_back(t: float) -> None:
    text = rfc1123(t)
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", text)
    assert parsedate_to_datetime(text).timestamp() == int(t)


def test_sse_timestamp_example() -> None:
    t = calendar.timegm((2014, 7, 10, 5, 17, 44)) + 0.995958
    assert sse_timestamp(t) == "2014-07-10 05:17:44.995958Z"


def test_sse_timestamp_rounds_to_the_microsecond_and_carries() -> None:
    assert sse_timestamp(T0) == "2012-09-04 23:01:02.000000Z"
    assert sse_timestamp(T0 + 0.9999996) == "2012-09-04 23:01:03.000000Z"
    assert sse_timestamp(0.000001) == "1970-01-01 00:00:00.000001Z"


@_relaxed
@given(st.integers(min_value=0, max_value=4_102_444_800 * 10**6))
def test_sse_timestamp_matches_datetime(micros: int) -> None:
    t = micros / 1e6
    expected = datetime.fromtimestamp(micros // 10**6, UTC).replace(microsecond=micros % 10**6)
    text = sse_timestamp(t)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}Z", text)
    parsed = datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((parsed - expected).total_seconds()) <= 1e-6  # float epoch: ±1 µs at most


# ---- job objects ----


def test_summary_minimal_shape_and_order() -> None:
    out = job_summary(FakeJob())
    assert list(out) == ["id", "command", "status", "run_timeout", "created_at", "updated_at"]
    assert out == {
        "id": "aaaaaaaaaaaa25fd67fa8715fd547d3d",
        "command": "chef-client",
        "status": "running",
        "run_timeout": 300,
        "created_at": "Tue, 04 Sep 2012 23:01:02 GMT",
        "updated_at": "Tue, 04 Sep 2012 23:17:56 GMT",
    }
    assert "quorum" not in out


def test_summary_with_every_option() -> None:
    job = FakeJob(user="rebecca", dir="/home/rebecca", env={"FOO": "bears"}, file="raw:x")
    job.capture = True
    out = job_summary(job)
    assert list(out)[6:] == ["user", "dir", "env", "capture_output", "file_specified"]
    assert out["env"] == {"FOO": "bears"}
    assert out["capture_output"] is True and out["file_specified"] is True
    with_file = job_summary(job, include_file=True)
    assert list(with_file)[6:] == ["user", "dir", "env", "capture_output", "file"]
    assert with_file["file"] == "raw:x"


def test_summary_leaves_out_false_capture_and_missing_file() -> None:
    out = job_summary(FakeJob(capture=False, file=None), include_file=True)
    assert "capture_output" not in out and "file" not in out and "file_specified" not in out


def test_summary_shows_empty_env_and_empty_dir_when_set() -> None:
    out = job_summary(FakeJob(env={}, dir="", user=""))
    assert out["env"] == {} and out["dir"] == "" and out["user"] == ""


def test_summary_status_from_an_enum_is_a_plain_string() -> None:
    out = job_summary(FakeJob(status=Status.FAILED))
    assert out["status"] == "failed" and type(out["status"]) is str


def test_detail_puts_nodes_first_grouped_and_sorted() -> None:
    job = FakeJob(
        status="complete",
        nodes={"B": "succeeded", "C": Status.FAILED, "A": Status.SUCCEEDED, "a": "succeeded"},
    )
    out = job_detail(job)
    assert list(out)[0] == "nodes"
    assert out["nodes"] == {"failed": ["C"], "succeeded": ["A", "B", "a"]}
    assert list(out)[1:] == list(job_summary(job))
    assert all(type(k) is str for k in out["nodes"])
    orjson.dumps(out)  # enum keys would make this raise


def test_detail_pedant_example() -> None:
    job = FakeJob(command="sleep 1", status="quorum_failed", run_timeout=3600)
    job.nodes = {"DONKEY": "unavailable"}
    out = job_detail(job)
    for key in ("id", "created_at", "updated_at"):
        del out[key]
    assert out == {
        "nodes": {"unavailable": ["DONKEY"]},
        "command": "sleep 1",
        "status": "quorum_failed",
        "run_timeout": 3600,
    }


def test_detail_include_file_and_no_nodes() -> None:
    out = job_detail(FakeJob(file="base64:AP8="), include_file=True)
    assert out["nodes"] == {} and out["file"] == "base64:AP8=" and "file_specified" not in out


# ---- SSE ----


def test_sse_event_bytes() -> None:
    data = {"timestamp": "2014-07-10 05:17:44.995958Z", "node": "DONKEY", "status": "success"}
    assert sse_event("quorum_vote", "job-2", data) == (
        b"event: quorum_vote\nid: job-2\n"
        b'data: {"timestamp":"2014-07-10 05:17:44.995958Z","node":"DONKEY","status":"success"}'
        b"\n\n"
    )


def test_sse_event_data_is_one_line_even_with_newlines_in_values() -> None:
    out = sse_event("start", "job-1", {"command": "a\nb\r\nc", "env": {"X": "\n"}})
    assert out.endswith(b"\n\n")
    lines = out[:-2].split(b"\n")
    assert len(lines) == 3 and lines[2].startswith(b"data: ")
    assert orjson.loads(lines[2][6:]) == {"command": "a\nb\r\nc", "env": {"X": "\n"}}


def test_sse_event_unicode() -> None:
    out = sse_event("start", "org-1", {"command": "é☃"})
    assert out.decode("utf-8").endswith('data: {"command":"é☃"}\n\n')


@pytest.mark.parametrize(("name", "event_id"), [("a\nb", "job-1"), ("start", "job-1\r")])
def test_sse_event_rejects_multiline_name_or_id(name: str, event_id: str) -> None:
    with pytest.raises(ValueError):
        sse_event(name, event_id, {})


def _parse_sse(stream: bytes) -> list[dict[str, str]]:
    """A strict SSE parser (WHATWG rules, enough for our output): a blank line dispatches
    the pending event if it has data; comment lines are ignored."""
    events, pending = [], {}
    for line in stream.decode().split("\n"):
        if line == "":
            if "data" in pending:
                events.append(pending)
            pending = {}
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(": ")
            pending[key] = value
    assert pending == {}, "stream ended inside an event"
    return events


def test_keepalive_between_events_is_invisible_to_a_parser() -> None:
    keep = sse_comment_keepalive()
    assert keep == b":keepalive\n\n"
    one = sse_event("start", "job-1", {"a": 1})
    two = sse_event("job_complete", "job-2", {"status": "complete"})
    events = _parse_sse(keep + one + keep + keep + two + keep)
    assert [(e["event"], e["id"]) for e in events] == [
        ("start", "job-1"),
        ("job_complete", "job-2"),
    ]
    assert orjson.loads(events[1]["data"]) == {"status": "complete"}


def test_concatenated_events_equal_the_originals_batch_framing() -> None:
    one = sse_event("start", "job-1", {"a": 1})
    two = sse_event("run_start", "job-2", {"node": "A"})
    # The original joined events with a blank line and put "\n\n" after the batch.
    assert one + two == one[:-2] + b"\n\n" + two[:-2] + b"\n\n"
    assert len(_parse_sse(one + two)) == 2


def test_org_event_data_puts_job_after_timestamp() -> None:
    data = {"timestamp": "t", "command": "c", "run_timeout": 3600}
    out = org_event_data("abc", data)
    assert list(out) == ["timestamp", "job", "command", "run_timeout"]
    assert out["job"] == "abc"
    assert data == {"timestamp": "t", "command": "c", "run_timeout": 3600}  # not mutated


def test_org_event_data_without_timestamp_or_with_stale_job() -> None:
    assert list(org_event_data("j", {"status": "complete"})) == ["job", "status"]
    out = org_event_data("new", {"timestamp": "t", "job": "old", "status": "x"})
    assert list(out) == ["timestamp", "job", "status"] and out["job"] == "new"


# ---- node states and errors ----


def test_node_state_shapes() -> None:
    item = node_state_item("N", "available")
    assert list(item) == ["node_name", "availability"]
    assert item == {"node_name": "N", "availability": "available"}
    one = node_state("DONKEY", "offline", "unavailable")
    assert list(one) == ["node_name", "status", "availability"]
    assert orjson.dumps(one) == (
        b'{"node_name":"DONKEY","status":"offline","availability":"unavailable"}'
    )


def test_error_shapes() -> None:
    assert orjson.dumps(error_body("invalid key supplied")) == b'{"error":"invalid key supplied"}'
    assert orjson.dumps(error_list("Missing ccpk")) == b'{"error":["Missing ccpk"]}'


# ---- job ids ----

GUID = "3f2e1d0c9b8a7f6e5d4c3b2a19081726"


def test_make_job_id_layout() -> None:
    rnd = bytes(range(38))
    job_id = make_job_id(GUID, rnd)
    assert re.fullmatch(r"[0-9a-f]{32}", job_id)
    assert job_id[:12] == GUID[-12:]
    assert job_id[12:] == hashlib.md5(GUID.encode() + rnd).hexdigest()[:20]


def test_make_job_id_known_value() -> None:
    # `printf %s 3f2e...1726 | md5sum` = f7ae75c3d193be612c049508638864a4
    assert make_job_id(GUID, b"") == "3b2a19081726f7ae75c3d193be612c04"


def test_make_job_id_keeps_leading_zeros() -> None:
    # Search a few inputs for a digest starting with a zero nibble (1 in 16 chance each).
    for n in range(1000):
        rnd = n.to_bytes(4, "big")
        if hashlib.md5(GUID.encode() + rnd).digest()[0] < 0x10:
            job_id = make_job_id(GUID, rnd)
            assert len(job_id) == 32 and job_id[12] == "0"
            return
    pytest.fail("no digest with a leading zero nibble found")


def test_make_job_id_depends_on_random_bytes_and_lowercases() -> None:
    assert make_job_id(GUID, b"a") != make_job_id(GUID, b"b")
    assert make_job_id(GUID.upper(), b"a")[:12] == GUID[-12:]


@pytest.mark.parametrize("guid", ["", "abc", "zz" * 16, "3f2e1d0c-9b8a-7f6e-5d4c-3b2a19081726"])
def test_make_job_id_rejects_bad_guids(guid: str) -> None:
    with pytest.raises(ValueError):
        make_job_id(guid, b"x")
