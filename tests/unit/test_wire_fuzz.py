"""Fuzzing the wire parsers and the server's node pipeline: the CI slice of
tests/campaigns/fuzz_wire.py (hypothesis properties, a short pure run, a short atheris run).

The property everywhere: a parser returns a value or raises ``wire.MessageError`` (with one of
the pipeline's documented reasons), never anything else; the server pipeline never raises, its
replies pass the node's checks, and a node whose key the fuzzer does not have stays available.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.core import nodes as corenodes
from appliance.core import wire
from tests.campaigns import fuzz_wire
from tests.campaigns.fuzz_wire import EPOCH, ORG, ClientPipeline, ServerPipeline

REASONS = {"bad_size", "bad_header", "bad_signature", "bad_json", "bad_timestamp"}
KEY = b"k" * 32
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_WIRE_EXAMPLES", "100")),  # the campaign asks for more
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TEXT = st.text(st.characters(exclude_categories=()), max_size=30)  # surrogates included
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=25,
)
FRAMES = st.lists(st.binary(max_size=300), max_size=8)


def encode(value: object, ascii_only: bool) -> bytes:
    """JSON as any encoder might write it: NaN tokens, big integers, raw lone surrogates."""
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True).encode(
        "utf-8", "surrogatepass"
    )


def server_check(header: bytes, body: bytes, key: bytes = KEY) -> dict:
    return wire.check_server_inbound(
        header, body, max_body=65536, keys_for=lambda _: [key], now=EPOCH, max_skew=300
    )


def signed(body: bytes, key: bytes = KEY) -> list[bytes]:
    return [wire.format_header(wire.HMAC, wire.hmac_signature(key, body)), body]


# Header, date, frames: any bytes ---------------------------------------------------------------
@FUZZ
@given(st.binary(max_size=3000))
def test_parse_header_returns_a_header_or_refuses_non_ascii(raw):
    try:
        header = wire.parse_header(raw)
    except wire.MessageError as exc:
        assert exc.reason == "bad_header"
        assert not raw.isascii()
    else:
        assert isinstance(header, wire.Header)


@FUZZ
@given(JSON)
def test_parse_http_date_gives_a_finite_time_or_none(value):
    t = wire.parse_http_date(value)
    assert t is None or (isinstance(t, float) and math.isfinite(t))


@FUZZ
@given(st.binary(max_size=3000), st.binary(max_size=3000))
def test_server_check_of_any_two_frames_accepts_or_refuses_with_a_reason(header, body):
    try:
        result = server_check(header, body)
    except wire.MessageError as exc:
        assert exc.reason in REASONS
    else:
        assert isinstance(result, dict)


@FUZZ
@given(st.binary(max_size=3000), st.binary(max_size=3000))
def test_client_check_of_any_two_frames_accepts_or_refuses_with_a_reason(header, body):
    try:
        result = wire.check_client_inbound(
            header, body, session_key=KEY, server_public_key=None, now=EPOCH, max_skew=300
        )
    except wire.MessageError as exc:
        assert exc.reason in REASONS
    else:
        assert isinstance(result, dict)


@FUZZ
@given(st.integers(1, 70_000), st.binary(min_size=1, max_size=64))
def test_an_oversized_body_is_refused_before_it_is_parsed(extra, filler):
    body = (filler * (65536 // len(filler) + 2))[: 65536 + extra]
    with pytest.raises(wire.MessageError) as exc:
        server_check(wire.format_header(wire.HMAC, wire.hmac_signature(KEY, body)), body)
    assert exc.value.reason == "bad_size"


# Validly signed garbage: the JSON, date and node code is reached -----------------------------
@FUZZ
@given(JSON, st.booleans())
def test_a_signed_body_of_any_json_shape_is_parsed_or_refused_but_never_as_a_bad_signature(
    value, ascii_only
):
    raw = encode(value, ascii_only)
    try:
        result = server_check(*signed(raw))
    except wire.MessageError as exc:
        assert exc.reason in {"bad_json", "bad_timestamp"}, exc
    else:
        assert result == orjson.loads(raw)


@FUZZ
@given(
    kind=st.sampled_from(sorted(corenodes.MESSAGE_TYPES)) | JSON,
    job_id=JSON,
    job_state=JSON,
    sequence=st.integers() | JSON,
    incarnation=st.just("inc-fuzz1") | JSON,
    extra=st.dictionaries(TEXT, JSON, max_size=3),
    skew=st.floats(-299, 299),
    ascii_only=st.booleans(),
    node=st.sampled_from(["fuzz1", "fuzz2", "victim", "unknown"]),
)
def test_a_signed_message_with_any_field_values_is_accepted_and_handled(
    kind, job_id, job_state, sequence, incarnation, extra, skew, ascii_only, node
):
    pipe = ServerPipeline(3)
    ident = next(i for i in pipe.identities if i.node == node)
    body = wire.node_message(
        node=node,
        client="h",
        org=ORG,
        type="heartbeat",
        sequence=1,
        t=pipe.now + skew,
        incarnation="inc-fuzz1",
        job_id=None,
    )
    body.update(extra)
    body.update(type=kind, job_id=job_id, job_state=job_state, sequence=sequence)
    body.update(incarnation_id=incarnation, org=ORG, node=node)
    body["timestamp"] = wire.http_date(pipe.now + skew)
    raw = encode(body, ascii_only)
    key = ident.key or b"not the victim's key"
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    before = sum(pipe.reactor.dropped.values())
    pipe.feed(signed(raw, key))  # raises only when a property broke
    accepted = sum(pipe.reactor.dropped.values()) == before
    valid_type = isinstance(kind, str) and kind in corenodes.MESSAGE_TYPES
    assert accepted == (parsed is not None and ident.key is not None and valid_type)
    pipe.check_victim()


@FUZZ
@given(FRAMES)
def test_the_server_pipeline_survives_any_frames(frames):
    pipe = ServerPipeline(4)
    pipe.feed(frames)
    pipe.tick(0.05)
    pipe.check_victim()


@FUZZ
@given(
    kind=st.sampled_from(["commit", "run", "abort", "ack"]) | JSON,
    fields=st.dictionaries(
        st.sampled_from(["command", "job_id", "user", "dir", "env", "file", "capture"]) | TEXT,
        JSON | st.sampled_from(["chef-client", "echo hi", "raw:x", "base64:QQ=="]),
        max_size=6,
    ),
    ascii_only=st.booleans(),
)
def test_the_node_handles_any_signed_command(kind, fields, ascii_only):
    client = ClientPipeline(5)
    for job_id in ("j1", "j1"):  # commit then run the same job
        body = {"sequence": 1, "timestamp": wire.http_date(client.now), "type": kind}
        body.update(fields)
        body.setdefault("job_id", job_id)
        client.feed(signed(encode(body, ascii_only), client.key))
        body["type"] = "run"
        client.feed(signed(encode(body, ascii_only), client.key))


# Regressions -------------------------------------------------------------------------------
@pytest.mark.parametrize("job_state", [[], {}, ["running"], {"a": 1}])
def test_ghost_heartbeat_with_a_non_string_job_state_resumes_the_node(job_state):
    """Bug found by this fuzz: after a server restart, a node's heartbeat whose ``job_state`` is
    a JSON list or object raised TypeError (unhashable) in nodes._reported_assignment, so the
    reactor logged an internal error for every beat and the node never came back."""
    table = corenodes.NodeTable(corenodes.Liveness(0.2, 4, 0.6, 0.5))
    key = (ORG, "fuzz1")
    table.restore(key, "inc-1", EPOCH)
    view = corenodes.JobView(is_live=lambda _: False, assignment=lambda _: None)
    body = {"type": "heartbeat", "incarnation_id": "inc-1", "job_state": job_state}
    effects = table.on_message(key, b"addr", body, EPOCH + 1, view)
    assert effects == [corenodes.Send(key, "ack")]
    assert table.online(key) is not None


def test_ghost_heartbeat_with_a_non_string_job_state_through_the_reactor():
    """The same, end to end through Reactor.handle_frames: no exception, the node is online."""
    pipe = ServerPipeline(6)
    pipe.table.restore((ORG, "fuzz1"), "inc-fuzz1", pipe.now)
    ident = pipe.identities[0]
    body = wire.node_message(
        node="fuzz1",
        client="h",
        org=ORG,
        type="heartbeat",
        sequence=1,
        t=pipe.now,
        incarnation="inc-fuzz1",
        job_id="j",
        job_state="idle",
    )
    body["job_state"] = ["running"]
    pipe.feed(wire.hmac_frames(ident.key, body))
    assert pipe.table.online((ORG, "fuzz1")) is not None


@pytest.mark.parametrize("kind", [[], {}, ["heartbeat"], 1, None])
def test_a_signed_message_with_a_non_string_type_is_dropped_as_bad_type(kind):
    """Found by this fuzz (fixed at the same time by another helper): a list or object ``type``
    raised TypeError (unhashable) in Reactor.handle_frames instead of being dropped."""
    pipe = ServerPipeline(7)
    body = wire.node_message(
        node="fuzz1",
        client="h",
        org=ORG,
        type="heartbeat",
        sequence=1,
        t=pipe.now,
        incarnation="inc-fuzz1",
        job_id=None,
    )
    body["type"] = kind
    pipe.feed(wire.hmac_frames(pipe.identities[0].key, body))
    assert pipe.reactor.dropped["bad_type"] == 1
    assert (ORG, "fuzz1") not in pipe.table.nodes


# The campaign's code, small -------------------------------------------------------------------
def test_pure_fuzz_slice_finds_nothing_and_reaches_the_job_code():
    report = fuzz_wire.run_pure(20_000, seed=20240611)
    assert report.failures == []
    assert report.server_inputs + report.client_inputs == 20_000
    # the fuzz gets past the signature check and drives jobs, replies and the node's machine
    assert report.accepted > 1000 and report.replies > 100 and report.jobs_created > 10
    assert report.client_accepted > 100


def test_atheris_slice_runs_without_a_crash(tmp_path: Path):
    report = fuzz_wire.run_atheris(5000, seed=7, workdir=tmp_path, max_seconds=120)
    assert not report.crashed, report.output_tail
    assert report.runs == 5000 and report.coverage > 100


def test_atheris_harness_reports_a_crash(tmp_path: Path):
    """The atheris run is not vacuous: a planted exception in the target is reported."""
    report = fuzz_wire.run_atheris(
        5000, seed=7, workdir=tmp_path, max_seconds=60, env={"FUZZ_WIRE_PLANTED_BUG": "1"}
    )
    assert report.crashed and "planted bug" in report.output_tail
