"""core.schemacheck, the checker the identity handlers and the websocket read their request
schemas with: it must read a schema as a JSON Schema validator does (jsonschema-rs, the one
the REST fuzzing uses), and the request schemas must stay within what it reads."""

from __future__ import annotations

import re
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core.identity import schemas
from appliance.core.schemacheck import Problem, first_problem, fits, has_types, obj
from appliance.server.schemas import STREAM_SCHEMAS

# the request schemas, as checked and as documented (aliases, anyOf), and the websocket's
SCHEMAS: dict[str, dict[str, Any]] = {
    **schemas.REQUEST_SCHEMAS,
    "CLIENT_REQUEST": schemas.CLIENT_REQUEST,
    "GROUP_REQUEST": schemas.GROUP_REQUEST,
    "GROUP_MEMBERS": schemas.GROUP_MEMBERS,
    "WsClientSubscribe": STREAM_SCHEMAS["WsClientSubscribe"],
}


def test_obj_builds_closed_and_open_object_schemas() -> None:
    assert obj({"a": {"type": "string"}}, ["a"]) == {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    assert "additionalProperties" not in obj({}, closed=False)
    assert "required" not in obj({})


def test_first_problem_walks_the_declared_order() -> None:
    schema = obj({"a": {"type": "string"}, "b": {"type": "boolean"}}, ["a", "b"], closed=False)
    assert first_problem(schema, {"a": 1, "b": 2}) == Problem("a", missing=False)
    assert first_problem(schema, {"b": 2}) == Problem("a", missing=True)
    assert first_problem(schema, {"a": "x", "b": None}) == Problem("b", missing=False)
    assert first_problem(schema, {"a": 1}, only=("b",)) == Problem("b", missing=True)
    assert first_problem(schema, {"a": "x", "b": True, "extra": 1}) is None


@pytest.mark.parametrize(
    ("schema", "good", "bad"),
    [
        ({"type": ["string", "null"]}, [None, ""], [1, False]),
        ({"const": True}, [True], [1, "true"]),
        ({"const": 1}, [1], [True, 1.5]),
        ({"type": "integer"}, [0, -3], [True, 1.5, "1"]),
        ({"type": "number"}, [0, 1.5], [False, None]),
        ({"pattern": "^[a-z]+$"}, ["ab", 5], ["ab\n", "a b", ""]),
        ({"pattern": "^(raw:|base64:)"}, ["raw:x\n", "base64:"], ["x raw:"]),
        ({"minLength": 1, "maxLength": 2}, ["a", "ab", 7], ["", "abc"]),
        ({"items": {"type": "string"}}, [[], ["a"], "not a list"], [[1], ["a", None]]),
        ({"anyOf": [{"const": "*"}, {"type": "array"}]}, ["*", []], ["all", {}]),
        (obj({"a": {"type": "string"}}, ["a"]), [{"a": "x"}], [5, {}, {"a": 1}, {"a": "", "b": 1}]),
        ({"additionalProperties": {"type": "string"}}, [{"k": "v"}], [{"k": 1}]),
        ({"minimum": 1, "maximum": 3}, [1, 3, 2.5, "0", True, None], [0, 0.5, 4, 3.01]),
    ],
)
def test_fits_reads_each_keyword_as_json_schema_does(schema, good, bad) -> None:
    validator = jsonschema_rs.validator_for(schema)
    for value in good:
        assert fits(schema, value) and validator.is_valid(value), value
    for value in bad:
        assert not fits(schema, value) and not validator.is_valid(value), value


def test_fits_refuses_a_keyword_it_does_not_read() -> None:
    with pytest.raises(ValueError, match="not supported"):
        fits({"type": "string", "maxItems": 3}, "x")
    assert fits({"type": "string", "description": "d", "default": "x"}, "y")


def _walk(schema: Any) -> Any:
    if isinstance(schema, dict):
        yield schema
        for value in schema.values():
            yield from _walk(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _walk(value)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_request_schemas_stay_within_what_the_checker_reads(name: str) -> None:
    schema = SCHEMAS[name]
    fits(schema, {})  # raises on a keyword it does not read (anyOf branches included)
    for sub in _walk(schema):
        if isinstance(sub.get("pattern"), str):
            # where Python's re and ECMA-262 differ: neither may appear
            assert not re.search(r"\\[dDsSwWbB]", sub["pattern"]), (name, sub["pattern"])
        if isinstance(sub.get("properties"), dict) and "type" in sub:
            assert set(sub.get("required", ())) <= set(sub["properties"]), name


VALUES = st.sampled_from(
    [None, True, 0, 1.5, "", "x", "*", "acme", "a b", "a\n", "UP", "x" * 256, "Chef::Node",
     "node", "infinity", "2030-01-01T00:00:00Z", "2030-13-01T00:00:00Z", "٢٠٣٠-01-01T00:00:00Z",
     "recipe[a]", "role[b c]", "recipe[a\ufeff]", "recipe[a\x1c]", "recipe[a\u3000]", "base",
     [], ["a"], [1], ["recipe[a]", "base"], ["recipe[a\ufeff]"], ["recipe[a\x85]"], {},
     {"users": ["a"]}, {"users": 5}, {"a": 1}]
)  # fmt: skip
KEYS = sorted(
    {k for s in SCHEMAS.values() for sub in _walk(s) for k in sub.get("properties", {})} | {"extra"}
)


@settings(max_examples=600, deadline=None)
@given(
    name=st.sampled_from(sorted(SCHEMAS)),
    body=st.dictionaries(
        st.sampled_from(KEYS), VALUES | st.dictionaries(st.sampled_from(KEYS), VALUES)
    ),
)
def test_checker_agrees_with_jsonschema_rs_on_request_bodies(name: str, body: dict) -> None:
    schema = SCHEMAS[name]
    assert fits(schema, body) == jsonschema_rs.validator_for(schema).is_valid(body), (name, body)


def test_run_list_pattern_is_pythons_whitespace_spelled_out() -> None:
    """The document's pattern refuses exactly the whitespace the server's check refused
    (Python's \\s, which ECMA's \\s is not)."""
    item = schemas.RUN_LIST_ITEM
    validator = jsonschema_rs.validator_for(item)
    for code in range(0x3001):
        text = f"recipe[a{chr(code)}]"
        if chr(code) in "[]":
            continue
        python_space = re.fullmatch(r"\s", chr(code)) is not None
        assert fits(item, text) is (not python_space), hex(code)
        assert validator.is_valid(text) is (not python_space), hex(code)
    assert fits(item, "recipe[a\ufeff]") and validator.is_valid("recipe[a\ufeff]")


def test_the_document_serves_the_schemas_the_handlers_read() -> None:
    from appliance.server.app import api_document

    served = api_document()["components"]["schemas"]
    for name, schema in schemas.REQUEST_SCHEMAS.items():
        assert served[name] is schema or served[name] == schema, name


def test_has_types_reads_only_types_nested() -> None:
    names = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}
    assert has_types(names, []) and has_types(names, [""])  # other keywords: the caller's
    assert not has_types(names, ["a", 1]) and not has_types(names, "a")
    env = {"type": "object", "additionalProperties": {"type": "string"}}
    assert has_types(env, {"A": "1"}) and not has_types(env, {"A": 1})
    closed = obj({"n": {"type": "integer", "maximum": 3}})
    assert has_types(closed, {"n": 9, "other": []})  # unknown keys: not a type question
    assert not has_types(closed, {"n": 1.5}) and not has_types(closed, {"n": True})
    assert has_types(closed, {"n": 1.5}, number_for_integer=True)
    assert not has_types(closed, {"n": True}, number_for_integer=True)
    assert has_types({"type": ["string", "null"]}, None)


def test_first_problem_with_a_types_only_fit() -> None:
    schema = obj({"a": {"type": "string", "pattern": "^x$"}, "b": {"type": "integer"}}, ["b"])
    assert first_problem(schema, {"a": "y", "b": 1}) == Problem("a", missing=False)
    assert first_problem(schema, {"a": "y", "b": 1}, fit=has_types) is None
    assert first_problem(schema, {"a": "y"}, fit=has_types) == Problem("b", missing=True)
