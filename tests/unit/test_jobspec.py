"""POST /jobs validation: pedant's cases, the original's messages and their order, and the
400s that replace the original's 500s."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.core.jobspec import (
    MAX_COUNT,
    JobRequestError,
    JobSpec,
    decode_job_file,
    parse_job_request,
)

NODES = "at least one node must be supplied"
COMMAND = "invalid command supplied"
RUN_TIMEOUT_TYPE = "invalid type supplied for run_timeout (expected a number)"
QUORUM_TYPE = "invalid type supplied for quorum (expected a number)"
UNKNOWN = "an unknown validation error has occurred"
EXTRA = "invalid key supplied"
ENV_DUP = "invalid environment value (duplicate key)"
FILE_PREFIX = "invalid file contents (expected 'base64:...' or 'raw:...')"
FILE_B64 = "invalid file contents (couldn't decode base64 string)"
FILE_SIZE = "invalid file size (must be <= 100000 bytes)"


def body(**fields: object) -> bytes:
    doc: dict[str, object] = {"command": "chef-client", "nodes": ["DONKEY"]}
    doc.update(fields)
    return json.dumps({k: v for k, v in doc.items() if v is not _DROP}).encode()


_DROP = object()
# The machine may be busy with other test runs: no timing-based health checks.
_relaxed = settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)


def error_of(raw: bytes | str, **kwargs: object) -> str:
    with pytest.raises(JobRequestError) as info:
        parse_job_request(raw, **kwargs)  # type: ignore[arg-type]
    assert info.value.message == str(info.value)
    return info.value.message


# ---- accepted requests ----


def test_minimal_request_gets_defaults() -> None:
    spec = parse_job_request(body(nodes=["A", "B"]))
    assert spec == JobSpec(command="chef-client", nodes=("A", "B"), quorum=2, run_timeout=3600)
    assert spec.user is None and spec.dir is None and spec.env is None and spec.file is None
    assert spec.capture is False


def test_default_run_timeout_comes_from_the_caller() -> None:
    assert parse_job_request(body(), default_run_timeout=42).run_timeout == 42


def test_every_option_is_kept() -> None:
    spec = parse_job_request(
        body(
            nodes=["n2", "n1"],
            quorum=1,
            run_timeout=300,
            user="rebecca",
            dir="/home/rebecca",
            env={"FOO": "bears", "EMPTY": ""},
            file="raw:#!/bin/sh\necho hi:there",
            capture_output=True,
        )
    )
    assert spec == JobSpec(
        command="chef-client",
        nodes=("n2", "n1"),
        quorum=1,
        run_timeout=300,
        user="rebecca",
        dir="/home/rebecca",
        env={"FOO": "bears", "EMPTY": ""},
        file="raw:#!/bin/sh\necho hi:there",
        capture=True,
    )


@pytest.mark.parametrize(
    ("fields", "attr", "expected"),
    [
        ({"command": ""}, "command", ""),
        ({"quorum": _DROP}, "quorum", 1),
        ({"quorum": 1}, "quorum", 1),
        ({"quorum": 999}, "quorum", 999),  # original accepts; the job ends quorum_failed
        ({"quorum": 0}, "quorum", 0),
        ({"quorum": 2.0}, "quorum", 2),
        ({"run_timeout": _DROP}, "run_timeout", 3600),
        ({"run_timeout": 0}, "run_timeout", 0),
        ({"run_timeout": 3600}, "run_timeout", 3600),
        ({"run_timeout": 1e3}, "run_timeout", 1000),
        ({"run_timeout": -0.0}, "run_timeout", 0),
        ({"run_timeout": MAX_COUNT}, "run_timeout", MAX_COUNT),
        ({"capture_output": False}, "capture", False),
        ({"env": {}}, "env", {}),
        ({"file": "base64:" + base64.b64encode(b"\x00\xff").decode()}, "file", "base64:AP8="),
    ],
)
def test_pedant_accepted_values(fields: dict[str, object], attr: str, expected: object) -> None:
    value = getattr(parse_job_request(body(**fields)), attr)
    assert value == expected and type(value) is type(expected)


def test_body_may_be_str_and_unicode() -> None:
    spec = parse_job_request('{"command": "échø ☃", "nodes": ["nœud"]}')
    assert spec.command == "échø ☃" and spec.nodes == ("nœud",)


def test_file_at_the_size_limit_is_accepted() -> None:
    assert parse_job_request(body(file="raw:" + "X" * 100000)).file == "raw:" + "X" * 100000
    multibyte = "é" * 50000  # 100000 UTF-8 bytes
    assert parse_job_request(body(file="raw:" + multibyte)).file is not None


# ---- pedant's 400s ----


@pytest.mark.parametrize("command", [_DROP, [], {}, 0, False, None])
def test_bad_command(command: object) -> None:
    assert error_of(body(command=command)) == COMMAND


@pytest.mark.parametrize(
    "nodes", [_DROP, "", "DONKEY", [], [False], [None], [{}], ["A", None], {}, 0, False, None]
)
def test_bad_nodes(nodes: object) -> None:
    assert error_of(body(nodes=nodes)) == NODES


@pytest.mark.parametrize("value", ["", "1", [], {}, False, True, None])
def test_bad_quorum_type(value: object) -> None:
    assert error_of(body(quorum=value)) == QUORUM_TYPE


@pytest.mark.parametrize("value", ["", "1", [], {}, False, True, None])
def test_bad_run_timeout_type(value: object) -> None:
    assert error_of(body(run_timeout=value)) == RUN_TIMEOUT_TYPE


@pytest.mark.parametrize("value", [None, 0, "true", [], {}])
def test_bad_capture_output_type(value: object) -> None:
    assert error_of(body(capture_output=value)) == (
        "invalid type supplied for capture_output (expected a boolean)"
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"user": None},
        {"user": 1},
        {"dir": []},
        {"dir": False},
        {"file": {}},
        {"file": None},
        {"env": []},
        {"env": "A=B"},
        {"env": None},
        {"env": {"A": 1}},
        {"env": {"A": None}},
        {"env": {"A": {"B": "C"}}},
    ],
)
def test_bad_option_types(fields: dict[str, object]) -> None:
    assert error_of(body(**fields)) == UNKNOWN


def test_extra_key() -> None:
    assert error_of(body(foo="bar")) == EXTRA
    assert error_of(body(capture=True)) == EXTRA  # the wire name is capture_output


def test_file_too_large() -> None:
    assert error_of(body(file="raw:" + "X" * 100001)) == FILE_SIZE
    big = base64.b64encode(b"\x00" * 100001).decode()
    assert error_of(body(file="base64:" + big)) == FILE_SIZE
    assert error_of(body(file="raw:" + "é" * 50001)) == FILE_SIZE  # bytes, not characters


def test_file_size_limit_is_a_parameter() -> None:
    assert error_of(body(file="raw:XYZ"), max_file_bytes=2) == (
        "invalid file size (must be <= 2 bytes)"
    )
    assert parse_job_request(body(file="raw:XY"), max_file_bytes=2).file == "raw:XY"


@pytest.mark.parametrize("file", ["", "hello", "RAW:x", "base64", "raw", "b64:AAAA"])
def test_file_without_prefix(file: str) -> None:
    assert error_of(body(file=file)) == FILE_PREFIX


@pytest.mark.parametrize("b64", ["!!!!", "AAA", "AP8", "A===", "AP8=X", "AP8=====", "é"])
def test_file_bad_base64(b64: str) -> None:
    assert error_of(body(file="base64:" + b64)) == FILE_B64


def test_env_duplicate_key() -> None:
    raw = b'{"command":"x","nodes":["A"],"env":{"A":"1","B":"2","A":"3"}}'
    assert error_of(raw) == ENV_DUP


# ---- order of the checks: types, extra keys, empty nodes, env duplicates, file ----


def test_types_before_extra_keys() -> None:
    assert error_of(body(foo=1, quorum="1")) == QUORUM_TYPE
    assert error_of(body(foo=1, user=1)) == UNKNOWN


def test_type_order_among_fields() -> None:
    assert error_of(body(command=1, nodes=1)) == COMMAND
    assert error_of(body(nodes=1, run_timeout="1")) == NODES
    assert error_of(body(run_timeout="1", quorum="1")) == RUN_TIMEOUT_TYPE
    assert error_of(body(quorum="1", capture_output=1)) == QUORUM_TYPE
    assert error_of(body(capture_output=1, user=1)) == (
        "invalid type supplied for capture_output (expected a boolean)"
    )


def test_extra_keys_before_empty_nodes() -> None:
    assert error_of(body(nodes=[], foo=1)) == EXTRA


def test_empty_nodes_before_env_duplicates_and_file() -> None:
    raw = b'{"command":"x","nodes":[],"env":{"A":"1","A":"2"},"file":"nope"}'
    assert error_of(raw) == NODES


def test_env_duplicates_before_file() -> None:
    raw = b'{"command":"x","nodes":["A"],"env":{"A":"1","A":"2"},"file":"nope"}'
    assert error_of(raw) == ENV_DUP


def test_fixes_sit_after_the_original_checks() -> None:
    assert error_of(body(nodes=["A", "A"], foo=1)) == EXTRA
    assert error_of(body(run_timeout=-1, foo=1)) == EXTRA
    assert error_of(body(nodes=["A", "A"], run_timeout=-1)) == "duplicate node name 'A'"
    raw = b'{"command":"x","nodes":["A"],"quorum":-1,"env":{"A":"1","A":"2"}}'
    assert error_of(raw) == "invalid quorum (expected a non-negative integer)"


# ---- DESIGN.md fixes: 400 where the original gave 500 or crashed the job ----


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"nope", b'{"command": "x",}', b"\xff\xfe{}", b"[1,2", b'{"a": NaN}', b"Infinity"],
)
def test_invalid_json(raw: bytes) -> None:
    assert error_of(raw).startswith("invalid JSON: ")


def test_invalid_json_reason_is_short_and_useful() -> None:
    message = error_of(b'{"command": }')
    assert message.startswith("invalid JSON: Expecting value at line 1 column ")
    assert len(message) < 100


@pytest.mark.parametrize("raw", [b"[]", b'["command"]', b"1", b'"x"', b"null", b"true"])
def test_json_not_an_object(raw: bytes) -> None:
    assert error_of(raw) == "request body must be a JSON object"


def test_deeply_nested_json() -> None:
    raw = b'{"command":"x","nodes":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert error_of(raw).startswith("invalid JSON: ")


def test_lone_surrogate_is_rejected() -> None:
    raw = b'{"command":"\\ud800","nodes":["A"]}'
    assert error_of(raw) == "invalid JSON: string holds a lone surrogate"
    raw = b'{"command":"x","nodes":["A"],"env":{"\\udfff":"v"}}'
    assert error_of(raw) == "invalid JSON: string holds a lone surrogate"


def test_surrogate_pair_is_fine() -> None:
    assert parse_job_request(b'{"command":"\\ud83d\\ude00","nodes":["A"]}').command == "😀"


def test_duplicate_top_level_key() -> None:
    assert error_of(b'{"command":"x","nodes":["A"],"command":"y"}') == "duplicate key 'command'"


def test_duplicate_node_names() -> None:
    assert error_of(body(nodes=["A", "B", "A"])) == "duplicate node name 'A'"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "invalid node name ''"),
        ("a/b", "invalid node name 'a/b'"),
        ("..//x", "invalid node name '..//x'"),
        ("a\nb", "invalid node name 'a\\nb'"),
        ("a\x00b", "invalid node name 'a\\x00b'"),
        ("x" * 256, f"invalid node name '{'x' * 256}'"),
    ],
)
def test_bad_node_names(name: str, message: str) -> None:
    assert error_of(body(nodes=["ok", name])) == message


def test_node_name_length_limit_and_odd_characters() -> None:
    names = ["x" * 255, "node.example.com", "a b", "ünï", "a:b"]
    assert parse_job_request(body(nodes=names)).nodes == tuple(names)


@pytest.mark.parametrize("field", ["run_timeout", "quorum"])
@pytest.mark.parametrize("value", ["-1", "-0.5", "1.5", "1e400", "-1e400", "3.000001"])
def test_negative_fractional_or_infinite_counts(field: str, value: str) -> None:
    raw = f'{{"command":"x","nodes":["A"],"{field}":{value}}}'.encode()
    assert error_of(raw) == f"invalid {field} (expected a non-negative integer)"


@pytest.mark.parametrize("field", ["run_timeout", "quorum"])
@pytest.mark.parametrize("value", [str(10**30), "1e300", str(MAX_COUNT + 1)])
def test_huge_counts(field: str, value: str) -> None:
    raw = f'{{"command":"x","nodes":["A"],"{field}":{value}}}'.encode()
    assert error_of(raw) == f"invalid {field} (must be <= {MAX_COUNT})"


def test_absurdly_long_integer_is_a_clean_400() -> None:
    raw = b'{"command":"x","nodes":["A"],"quorum":' + b"9" * 5000 + b"}"
    assert error_of(raw).startswith("invalid JSON: ")


# ---- decode_job_file ----


def test_decode_raw_keeps_everything_after_the_prefix() -> None:
    assert decode_job_file("raw:") == b""
    assert decode_job_file("raw:a:b\nc") == b"a:b\nc"
    assert decode_job_file("raw:é") == "é".encode()


def test_decode_base64_tolerates_ruby_line_breaks() -> None:
    data = bytes(range(256)) * 3
    wrapped = base64.encodebytes(data).decode()  # newline every 76 characters
    assert "\n" in wrapped
    assert decode_job_file("base64:" + wrapped) == data
    assert decode_job_file("base64:") == b""


def test_decode_errors() -> None:
    with pytest.raises(JobRequestError, match="expected 'base64"):
        decode_job_file("text")
    with pytest.raises(JobRequestError, match="couldn't decode"):
        decode_job_file("base64:a-b_")  # urlsafe alphabet is not accepted


@_relaxed
@given(st.binary(max_size=300))
def test_decode_base64_round_trip(data: bytes) -> None:
    assert decode_job_file("base64:" + base64.b64encode(data).decode()) == data


# ---- nothing but JobRequestError, whatever the input ----


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_count = st.integers(-2, 5) | st.floats(-2, 5) | _json_values
_jobs = st.fixed_dictionaries(
    {
        "command": st.text(max_size=8),
        "nodes": st.lists(st.text("abc/", max_size=3), max_size=4),
    },
    optional={
        "run_timeout": _count,
        "quorum": _count,
        "user": st.text(max_size=4) | _json_values,
        "dir": st.text(max_size=4) | _json_values,
        "env": st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3) | _json_values,
        "file": st.sampled_from(["raw:x", "base64:AP8=", "base64:?", "x"]) | _json_values,
        "capture_output": st.booleans() | _json_values,
        "x": _json_values,
    },
)


_keys = st.sampled_from(
    [
        "command",
        "nodes",
        "run_timeout",
        "quorum",
        "user",
        "dir",
        "env",
        "file",
        "capture_output",
        "x",
    ]
)


@_relaxed
@given(_jobs | st.dictionaries(_keys, _json_values, max_size=9))
def test_any_object_gives_a_spec_or_a_request_error(doc: dict[str, object]) -> None:
    try:
        spec = parse_job_request(json.dumps(doc).encode())
    except JobRequestError as exc:
        assert isinstance(exc.message, str) and exc.message
    else:
        assert spec.nodes and len(set(spec.nodes)) == len(spec.nodes)
        assert 0 <= spec.quorum <= MAX_COUNT and 0 <= spec.run_timeout <= MAX_COUNT


@_relaxed
@given(st.binary(max_size=64))
def test_any_bytes_give_a_spec_or_a_request_error(raw: bytes) -> None:
    try:
        parse_job_request(raw)
    except JobRequestError:
        pass


# ------------------------------------------------------------------ one schema, two readers


def test_the_validator_and_the_document_read_one_schema():
    from appliance.core import jobschema
    from appliance.server.app import api_document

    doc = api_document()["components"]["schemas"]["JobRequest"]
    assert doc == jobschema.JOB_REQUEST
    props = jobschema.JOB_REQUEST["properties"]
    assert MAX_COUNT == props["run_timeout"]["maximum"] == props["quorum"]["maximum"]
    assert (
        error_of(json.dumps({"command": "x", "nodes": ["n"], "nope": 1})) == "invalid key supplied"
    )
    every = {
        "command": "x",
        "nodes": ["n"],
        "run_timeout": 1,
        "quorum": 1,
        "capture_output": True,
        "user": "u",
        "dir": "/",
        "file": "raw:x",
        "env": {"A": "b"},
        "max_concurrency": "50%",
        "max_errors": 0,
    }
    assert set(every) == set(props)
    parse_job_request(json.dumps(every))


# ------------------------------------------------------------------ rolling execution (issue 15)

MAX_CONCURRENCY_ERROR = (
    'invalid max_concurrency (expected an integer >= 1 or a percentage from "1%" to "100%")'
)
MAX_ERRORS_ERROR = (
    'invalid max_errors (expected an integer >= 0 or a percentage from "0%" to "100%")'
)


@pytest.mark.parametrize(
    ("field", "value", "kept"),
    [
        ("max_concurrency", 1, 1),
        ("max_concurrency", 2.0, 2),
        ("max_concurrency", "1%", "1%"),
        ("max_concurrency", "100%", "100%"),
        ("max_errors", 0, 0),
        ("max_errors", "0%", "0%"),
        ("max_errors", "35%", "35%"),
        ("max_errors", MAX_COUNT, MAX_COUNT),
    ],
)
def test_rolling_limits_are_kept_as_given(field: str, value: object, kept: object) -> None:
    spec = parse_job_request(json.dumps({"command": "x", "nodes": ["a", "b"], field: value}))
    assert getattr(spec, field) == kept and type(getattr(spec, field)) is type(kept)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_concurrency", 0, MAX_CONCURRENCY_ERROR),
        ("max_concurrency", -1, MAX_CONCURRENCY_ERROR),
        ("max_concurrency", 1.5, MAX_CONCURRENCY_ERROR),
        ("max_concurrency", "0%", MAX_CONCURRENCY_ERROR),
        ("max_concurrency", "101%", MAX_CONCURRENCY_ERROR),
        ("max_concurrency", "5", MAX_CONCURRENCY_ERROR),
        ("max_concurrency", "05%", MAX_CONCURRENCY_ERROR),
        ("max_concurrency", "5%\n", MAX_CONCURRENCY_ERROR),
        ("max_concurrency", True, MAX_CONCURRENCY_ERROR),
        ("max_concurrency", None, MAX_CONCURRENCY_ERROR),
        ("max_concurrency", MAX_COUNT + 1, MAX_CONCURRENCY_ERROR),
        ("max_errors", -1, MAX_ERRORS_ERROR),
        ("max_errors", "-1%", MAX_ERRORS_ERROR),
        ("max_errors", [1], MAX_ERRORS_ERROR),
        ("max_errors", 1e300, MAX_ERRORS_ERROR),
    ],
)
def test_bad_rolling_limits_are_refused_naming_the_field(
    field: str, value: object, message: str
) -> None:
    assert error_of(json.dumps({"command": "x", "nodes": ["a"], field: value})) == message


def test_an_original_fault_still_wins_over_a_rolling_one():
    body = {"command": "x", "nodes": [], "max_concurrency": 0}
    assert error_of(json.dumps(body)) == "at least one node must be supplied"


def test_a_share_of_the_nodes_is_rounded_up():
    from appliance.core.jobspec import share_of

    assert share_of("10%", 15) == 2
    assert share_of("1%", 10) == 1
    assert share_of("100%", 7) == 7
    assert share_of("0%", 7) == 0
    assert share_of(4, 10) == 4


def test_type_faults_keep_the_original_order_and_a_final_newline_is_no_name():
    both = {"command": "x", "nodes": ["n"], "user": 3, "capture_output": "yes"}
    assert (
        error_of(json.dumps(both))
        == "invalid type supplied for capture_output (expected a boolean)"
    )
    assert error_of(json.dumps({"command": "x", "nodes": ["n\n"]})) == "invalid node name 'n\\n'"
