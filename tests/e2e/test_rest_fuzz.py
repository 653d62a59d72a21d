"""REST fuzzing, CI slice: schemathesis over every route of the served OpenAPI document.

``test_rest_fuzz_slice`` runs tests/campaigns/fuzz_rest.py's campaign with a few cases per
operation (signed as the org admin, the superuser, a reader, a client, or not at all); the
other tests guard what the campaign found: a server bug (deeply nested identity bodies were a
500) and places where the document and the server disagreed (each row of
``DOCUMENT_AGREES`` was a mismatch: the document called valid what the server refuses, or the
reverse).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
import requests
import schemathesis
from schemathesis.specs.openapi.checks import response_schema_conformance

from appliance.server.app import api_document
from tests.campaigns.fuzz_rest import ORG, Campaign, ChefSigner, final_checks, fuzz_world
from tests.support import Chef, Server

SLICE_CASES = 400  # about 4 per operation and mode; the campaign runs 10,000
SLICE_SEED = 20240611
DOC: dict[str, Any] = json.loads(json.dumps(api_document()))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Any]]:
    with fuzz_world(tmp_path_factory.mktemp("restfuzz"), lambda _text: None) as pair:
        yield pair


@pytest.fixture(scope="module")
def admin(world) -> Chef:
    return world[1].admin


def test_rest_fuzz_slice(world):
    """Zero 5xx, every response as documented, every error a JSON object, unsigned and reader
    requests refused what they may not do, and the server still runs jobs afterwards."""
    server, fixture = world
    campaign = Campaign(server, fixture, seed=SLICE_SEED, say=lambda _text: None, max_seconds=120)
    report = campaign.run(SLICE_CASES)
    final_checks(server, fixture, report)
    assert report.cases >= SLICE_CASES
    covered = {label for label in report.per_operation if "(undocumented)" not in label}
    assert len(covered) == len(campaign.operations), "every operation got cases"
    assert report.ok, report.summary()


def _schema(name: str) -> Any:
    return jsonschema_rs.validator_for(DOC["components"]["schemas"][name])


def _param(template: str, method: str, name: str) -> dict[str, Any]:
    for param in DOC["paths"][template][method]["parameters"]:
        if param["name"] == name:
            return param
    raise KeyError(name)


OP = f"/organizations/{ORG}"
# (what, schema, body, method, path, status): the document says the body is valid exactly when
# the server accepts it (2xx); each row was a disagreement the campaign found.
DOCUMENT_AGREES = [
    ("client needs a name", "ClientRequest", {}, "POST", f"{OP}/clients", 400),
    ("clientname alone", "ClientRequest", {"clientname": "rf-c1"}, "POST", f"{OP}/clients", 201),
    (
        "clientname ignored beside name",
        "ClientRequest",
        {"name": "rf-c2", "clientname": 5},
        "POST",
        f"{OP}/clients",
        201,
    ),
    ("group needs a name", "GroupRequest", {}, "POST", f"{OP}/groups", 400),
    (
        "name ignored beside groupname",
        "GroupRequest",
        {"groupname": "rf-g1", "name": 7},
        "POST",
        f"{OP}/groups",
        201,
    ),
    (
        "a key needs create_key or public_key",
        "KeyRequest",
        {"name": "rf-k1"},
        "POST",
        "/users/fuzzadmin/keys",
        400,
    ),
    (
        "an expiration date with month 13",
        "KeyRequest",
        {"name": "rf-k2", "create_key": True, "expiration_date": "2030-13-01T00:00:00Z"},
        "POST",
        "/users/fuzzadmin/keys",
        400,
    ),
    (
        "an expiration date in range",
        "KeyRequest",
        {"name": "rf-k3", "create_key": True, "expiration_date": "2030-12-31T23:59:59Z"},
        "POST",
        "/users/fuzzadmin/keys",
        201,
    ),
    ("a new node needs a name", "NodeCreateRequest", {}, "POST", f"{OP}/nodes", 400),
    (
        "run-list item with a separator control character",
        "NodeCreateRequest",
        {"name": "rf-n1", "run_list": ["recipe[a\x1cb]"]},
        "POST",
        f"{OP}/nodes",
        400,
    ),
    (
        "run-list item that is no recipe or role",
        "NodeCreateRequest",
        {"name": "rf-n1", "run_list": ["not a recipe"]},
        "POST",
        f"{OP}/nodes",
        400,
    ),
    (
        "run-list of a role and a bare recipe",
        "NodeCreateRequest",
        {"name": "rf-n2", "run_list": ["role[web]", "base"]},
        "POST",
        f"{OP}/nodes",
        201,
    ),
    (
        "run-list item with a BOM (not whitespace to the server)",
        "NodeCreateRequest",
        {"name": "rf-n3", "run_list": ["recipe[a\ufeff]"]},
        "POST",
        f"{OP}/nodes",
        201,
    ),
    (
        "a null public_key is no key",
        "ClientRequest",
        {"name": "rf-c3", "public_key": None},
        "POST",
        f"{OP}/clients",
        201,
    ),
    (
        "a null public_key is no key for a new key either",
        "KeyRequest",
        {"name": "rf-k4", "public_key": None},
        "POST",
        "/users/fuzzadmin/keys",
        400,
    ),
    ("null actors", "GroupUpdate", {"actors": None, "users": []}, "PUT", f"{OP}/groups/rf-g1", 200),
    (
        "flat lists ignored beside an actors object",
        "GroupUpdate",
        {"actors": {"users": []}, "users": 5},
        "PUT",
        f"{OP}/groups/rf-g1",
        200,
    ),
    (
        "partial search under filter_result",
        "PartialSearchRequest",
        {"filter_result": {"n": ["name"]}},
        "POST",
        f"{OP}/search/node",
        200,
    ),
    (
        "partial search with a nested alias map",
        "PartialSearchRequest",
        {"a": {"b": ["name"]}},
        "POST",
        f"{OP}/search/node",
        400,
    ),
]


@pytest.mark.parametrize(
    ("schema", "body", "method", "path", "status"),
    [row[1:] for row in DOCUMENT_AGREES],
    ids=[row[0] for row in DOCUMENT_AGREES],
)
def test_document_agrees_with_the_server_on_request_bodies(
    admin, schema, body, method, path, status
):
    documented_valid = _schema(schema).is_valid(body)
    r = admin.request(method, path, body)
    assert r.status_code == status, r.text
    assert documented_valid == (200 <= status < 300), (schema, body, r.text)


def test_document_agrees_with_the_server_on_query_parameters(world, admin):
    """ccpk is required; start and rows have at most 18 digits; q is not empty."""
    config = f"{OP}/pushy/config/fuzznode1"
    assert _param("/organizations/{org}/pushy/config/{node}", "get", "ccpk")["required"]
    assert world[1].superuser.get(config).status_code == 400
    search = "/organizations/{org}/search/{index}"
    for name in ("start", "rows"):
        schema = jsonschema_rs.validator_for(_param(search, "get", name)["schema"])
        assert schema.is_valid("1" * 18) and not schema.is_valid("1" * 19)
        assert admin.get(f"{OP}/search/node?{name}={'1' * 19}").status_code == 400
        assert admin.get(f"{OP}/search/node?{name}={'0' * 17}1").status_code == 200
    q = jsonschema_rs.validator_for(_param(search, "get", "q")["schema"])
    assert not q.is_valid("")
    assert admin.get(f"{OP}/search/node?q=").status_code == 400


def test_event_stream_schema_describes_one_event(world, admin):
    """For text/event-stream the media schema describes each event ({event, id, data}), as
    schemathesis reads it (it said "type: string" and every feed response failed)."""
    server, fixture = world
    schema = schemathesis.openapi.from_dict(DOC)
    op = schema["/organizations/{org}/pushy/job_status_feed/{job_id}"]["GET"]
    case = op.Case(path_parameters={"org": ORG, "job_id": fixture.jobs[0]})
    signer = ChefSigner(admin.user, admin.key)
    response = case.call(base_url=server.url, auth=signer, timeout=10)
    assert response.status_code == 200
    assert b"event: summary" in response.content
    case.validate_response(response, checks=[response_schema_conformance])
    event = DOC["paths"]["/organizations/{org}/pushy/job_status_feed/{job_id}"]["get"]
    media = event["responses"]["200"]["content"]["text/event-stream"]["schema"]
    # every event has an id but live output's (never replayed), so the schema requires none
    assert media["required"] == ["event", "data"] and "id" in media["properties"]


@pytest.mark.parametrize("depth", [99, 101, 300, 1000])
def test_deeply_nested_identity_body_is_a_400_not_a_500(world, admin, depth):
    """A node record nested deeper than the server can store was a 500 (orjson writes at most
    254 levels, the handler's deepcopy recursed past Python's limit) and was not stored; it is
    now refused up front with a JSON 400, and a record within the limit is stored and served."""
    server, _ = world
    name = f"rf-deep{depth}"
    inner = '{"a":' * depth + "1" + "}" * depth
    body = f'{{"name": "{name}", "automatic": {inner}}}'.encode()
    r = admin.post(f"{OP}/nodes", raw=body)
    if depth < 100:  # the body object plus ``depth`` levels: within 100
        assert r.status_code == 201, r.text
        got = admin.get(f"{OP}/nodes/{name}")
        assert got.status_code == 200 and got.json()["automatic"]["a"]["a"]
        r = admin.put(f"{OP}/nodes/{name}", raw=body.replace(b'"a":1', b'"a":2'))
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 400, r.text
        assert r.json() == {"error": ["JSON body nested more than 100 levels deep"]}
        assert admin.get(f"{OP}/nodes/{name}").status_code == 404
        r = admin.put(f"{OP}/nodes/web1", raw=body.replace(name.encode(), b"web1"))
        assert r.status_code == 400, r.text
    assert admin.get(f"{OP}/search/node?q=name:{name}").status_code == 200
    assert requests.get(f"{server.url}/pushy/_status", timeout=10).status_code == 200
