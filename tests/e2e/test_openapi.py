"""The OpenAPI document (appliance/server/openapi.py, from each handler's declaration) against
the real server.

(a) the served /pushy/openapi.json is the document generated for the app's routes; (b) its paths and methods are
exactly the app's url_map (HEAD/OPTIONS aside), so no route is undocumented and no documented
route is missing; (c) real responses of the running server (success and error cases of every
kind of route) validate against the schemas the document gives for their status code and
content type. The validator is a small JSON Schema subset of our own (jsonschema is not a
dependency); it refuses any keyword it does not implement, so the document cannot rely on a
check that would silently be skipped.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any
from unittest import mock

import httpx
import pytest

from appliance.core.settings import Settings
from appliance.server.app import api_document, create_app
from tests.e2e.helpers import Node, join_node, post_job, run_to_success, wait_job
from tests.support import Chef, parse_sse, server_fixture, setup_org

server = server_fixture("openapi", wait_complete_time=0.3, keep_alive_time=1)

DOC: dict[str, Any] = json.loads(json.dumps(api_document()))  # as a client sees it
IGNORED_METHODS = {"HEAD", "OPTIONS"}

# --------------------------------------------------------------------------- a tiny validator

_ANNOTATIONS = {"description", "title", "example", "examples", "default", "format"}
_KEYWORDS = _ANNOTATIONS | {
    "$ref",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "minItems",
    "uniqueItems",
    "anyOf",
}
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: (
        isinstance(v, int | float) and not isinstance(v, bool) and float(v).is_integer()
    ),
}


def resolve(ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = DOC
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def errors(schema: dict[str, Any], value: Any, where: str = "$") -> list[str]:
    """Every way ``value`` breaks ``schema`` (empty when it conforms)."""
    unknown = set(schema) - _KEYWORDS
    assert not unknown, f"schema keyword(s) {unknown} not supported by this validator"
    if "$ref" in schema:
        return errors(resolve(schema["$ref"]), value, where)
    out: list[str] = []
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[k](value) for k in kinds):
            return [f"{where}: {value!r:.80} is not of type {schema['type']}"]
    if "const" in schema and value != schema["const"]:
        out.append(f"{where}: {value!r:.80} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: {value!r:.80} not in {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            out.append(f"{where}: {value!r:.80} does not match {schema['pattern']!r}")
        if len(value) < schema.get("minLength", 0):
            out.append(f"{where}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            out.append(f"{where}: longer than {schema['maxLength']}")
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{where}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{where}: {value} > {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            out.append(f"{where}: {value} <= {schema['exclusiveMinimum']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            out.append(f"{where}: fewer than {schema['minItems']} items")
        if schema.get("uniqueItems") and len({json.dumps(v) for v in value}) != len(value):
            out.append(f"{where}: items are not unique")
        if "items" in schema:
            for i, item in enumerate(value):
                out += errors(schema["items"], item, f"{where}[{i}]")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                out.append(f"{where}: required key {key!r} missing")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                out += errors(props[key], item, f"{where}.{key}")
            elif extra is False:
                out.append(f"{where}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                out += errors(extra, item, f"{where}.{key}")
    if "anyOf" in schema:
        branches = [errors(s, value, where) for s in schema["anyOf"]]
        if all(branches):
            out.append(f"{where}: matches no anyOf branch: {branches}")
    return out


def deref(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = resolve(node["$ref"])
    return node


def operation(method: str, template: str) -> dict[str, Any]:
    return DOC["paths"][template][method.lower()]


def check(
    template: str, r: httpx.Response, expect: int | None = None, *, method: str | None = None
) -> Any:
    """Validate a response (of status ``expect`` if given) against the document; returns its
    JSON body (or None)."""
    method = method or r.request.method
    if expect is not None:
        assert r.status_code == expect, f"{method} {template}: {r.status_code} {r.text[:300]}"
    op = operation(method, template)
    status = str(r.status_code)
    assert status in op["responses"], (
        f"{method} {template}: status {status} is not documented ({sorted(op['responses'])}); "
        f"body {r.text[:300]}"
    )
    spec = deref(op["responses"][status])
    for header in spec.get("headers", {}):
        assert header in r.headers, f"{method} {template} {status}: no {header} header"
    content = spec.get("content")
    if not content:
        return None
    ctype = r.headers.get("content-type", "").split(";")[0].strip()
    assert ctype in content, f"{method} {template} {status}: {ctype} not in {sorted(content)}"
    if ctype != "application/json":
        return None
    body = r.json()
    problems = errors(content[ctype]["schema"], body)
    assert not problems, f"{method} {template} {status}: {problems}\nbody: {r.text[:500]}"
    return body


# --------------------------------------------------------------------------- the document itself


def _walk(node: Any, path: str = "#") -> Any:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}/{i}")


def _check_schema(schema: Any, where: str) -> None:
    """Every keyword of ``schema`` and its sub-schemas is one the validator implements."""
    assert isinstance(schema, dict), where
    unknown = set(schema) - _KEYWORDS
    assert not unknown, f"{where}: schema keyword(s) {unknown} not supported by this validator"
    for key, sub in schema.get("properties", {}).items():
        _check_schema(sub, f"{where}/properties/{key}")
    for key in ("additionalProperties", "items"):
        if isinstance(schema.get(key), dict):
            _check_schema(schema[key], f"{where}/{key}")
    for i, sub in enumerate(schema.get("anyOf", [])):
        _check_schema(sub, f"{where}/anyOf/{i}")


def test_document_is_consistent():
    assert DOC["openapi"].startswith("3.1.")
    for where, node in _walk(DOC):
        if isinstance(node.get("$ref"), str):
            resolve(node["$ref"])  # raises KeyError when dangling
        if isinstance(node.get("schema"), dict):
            _check_schema(node["schema"], where + "/schema")
    for name, schema in DOC["components"]["schemas"].items():
        _check_schema(schema, name)
    op_ids = []
    for template, item in DOC["paths"].items():
        names = set(re.findall(r"{([^}]+)}", template))
        for method, op in item.items():
            op_ids.append(op["operationId"])
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == names, f"{method} {template}: path parameters {declared}"
            assert op["responses"], f"{method} {template}: no responses"
    assert len(op_ids) == len(set(op_ids)), "operationIds must be unique"


def test_validator_rejects_what_the_schemas_exclude():
    job = {"$ref": "#/components/schemas/JobSummary"}
    good = {
        "id": "a" * 32,
        "command": "chef-client",
        "status": "complete",
        "run_timeout": 3600,
        "created_at": "Tue, 04 Sep 2012 23:01:02 GMT",
        "updated_at": "Tue, 04 Sep 2012 23:01:02 GMT",
    }
    assert errors(job, good) == []
    assert errors(job, {**good, "status": "done"})
    assert errors(job, {**good, "quorum": 1})
    assert errors(job, {k: v for k, v in good.items() if k != "id"})
    assert errors(job, {**good, "created_at": "2012-09-04"})
    assert errors({"$ref": "#/components/schemas/Error"}, {"error": 3})
    assert errors({"$ref": "#/components/schemas/Error"}, {"error": ["x"]}) == []
    with pytest.raises(AssertionError, match="not supported"):
        errors({"type": "object", "patternProperties": {}}, {})


# --------------------------------------------------------------------------- (a) and (b)


def test_served_document_is_the_generated_document(server):
    r = httpx.get(f"{server.url}/pushy/openapi.json", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == DOC
    check("/pushy/openapi.json", r)


class _StubContext:
    """Enough of a ServerContext to build the app: the blueprints read it per request."""

    settings = Settings()

    def __getattr__(self, name: str) -> Any:
        return mock.MagicMock(name=name)


def test_every_route_is_documented_and_every_documented_route_exists():
    app = create_app(_StubContext())
    served: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        template = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        methods = set(rule.methods or ()) - IGNORED_METHODS
        served.setdefault(template, set()).update(methods)
    documented = {
        template: {method.upper() for method in item} for template, item in DOC["paths"].items()
    }
    assert served == documented, (
        f"undocumented: { {t: m - documented.get(t, set()) for t, m in served.items()} }\n"
        f"not served: { {t: m - served.get(t, set()) for t, m in documented.items()} }"
    )
    ws = [rule for rule in app.url_map.iter_rules() if rule.websocket]
    for rule in ws:
        template = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        assert "x-websocket" in operation("GET", template), template


# --------------------------------------------------------------------------- (c) real responses


@pytest.fixture(scope="module")
def admin(server) -> Chef:
    chef, _ = setup_org(server, "apiorg", ())
    return chef


def test_status_and_identity_responses_match(server, admin):
    base = server.url
    check("/pushy/_status", httpx.get(f"{base}/pushy/_status", timeout=10))
    check("/metrics", httpx.get(f"{base}/metrics", timeout=10), 200)  # text/plain
    r = admin.post("/organizations", {"name": "idorg", "full_name": "Id Org"})
    check("/organizations", r)
    check("/organizations", admin.post("/organizations", {"name": "idorg", "full_name": "x"}), 409)
    check(
        "/organizations", admin.post("/organizations", {"name": "Bad Name", "full_name": "x"}), 400
    )
    check("/organizations", admin.get("/organizations"))
    check("/organizations/{org}", admin.get("/organizations/idorg"))
    check("/organizations/{org}", admin.get("/organizations/nosuchorg"), 404)
    r = admin.post("/users", {"username": "ursula", "create_key": True})
    assert check("/users", r)["chef_key"]["private_key"]
    check("/users", admin.get("/users"))
    check("/users/{name}", admin.get("/users/ursula"))
    check("/users/{name}", admin.get("/users/nobody"), 404)
    check("/users/{name}/keys", admin.get("/users/ursula/keys"))
    check(
        "/users/{name}/keys", admin.post("/users/ursula/keys", {"name": "k2", "create_key": True})
    )
    check("/users/{name}/keys/{key}", admin.get("/users/ursula/keys/k2"))
    check("/users/{name}/keys/{key}", admin.delete("/users/ursula/keys/k2"))
    check(
        "/organizations/{org}/users",
        admin.post("/organizations/idorg/users", {"username": "ursula"}),
    )
    check("/organizations/{org}/users", admin.get("/organizations/idorg/users"))
    r = admin.post("/organizations/idorg/clients", {"name": "web1", "create_key": True})
    check("/organizations/{org}/clients", r)
    check(
        "/organizations/{org}/clients", admin.post("/organizations/idorg/clients", {"name": 3}), 400
    )
    check("/organizations/{org}/clients", admin.get("/organizations/idorg/clients"))
    check("/organizations/{org}/clients/{name}", admin.get("/organizations/idorg/clients/web1"))
    keys = "/organizations/{org}/clients/{name}/keys"
    check(keys, admin.get("/organizations/idorg/clients/web1/keys"))
    check(
        keys,
        admin.post("/organizations/idorg/clients/web1/keys", {"name": "k", "create_key": True}),
    )
    check(keys + "/{key}", admin.get("/organizations/idorg/clients/web1/keys/default"))
    check(keys + "/{key}", admin.delete("/organizations/idorg/clients/web1/keys/k"))
    check(
        "/organizations/{org}/groups",
        admin.post("/organizations/idorg/groups", {"groupname": "ops"}),
    )
    check("/organizations/{org}/groups", admin.get("/organizations/idorg/groups"))
    group = "/organizations/{org}/groups/{name}"
    check(
        group,
        admin.put("/organizations/idorg/groups/ops", {"users": ["ursula"], "clients": ["web1"]}),
    )
    check(group, admin.get("/organizations/idorg/groups/ops"))
    check(group, admin.delete("/organizations/idorg/groups/ops"))
    check(group, admin.delete("/organizations/idorg/groups/admins"), 400)
    node = {"name": "web1", "run_list": ["base"], "automatic": {"ipaddress": "10.0.0.1"}}
    check("/organizations/{org}/nodes", admin.post("/organizations/idorg/nodes", node))
    check("/organizations/{org}/nodes", admin.get("/organizations/idorg/nodes"))
    nodes = "/organizations/{org}/nodes/{name}"
    check(nodes, admin.put("/organizations/idorg/nodes/web1", {**node, "chef_environment": "prod"}))
    check(nodes, admin.get("/organizations/idorg/nodes/web1"))
    check("/organizations/{org}/search", admin.get("/organizations/idorg/search"))
    search = "/organizations/{org}/search/{index}"
    found = check(search, admin.get("/organizations/idorg/search/node?q=chef_environment:prod"))
    assert found["total"] == 1
    partial = admin.post("/organizations/idorg/search/node", {"ip": ["ipaddress"]})
    assert check(search, partial)["rows"][0]["data"] == {"ip": "10.0.0.1"}
    check(search, admin.get("/organizations/idorg/search/node?q=name:("), 400)
    check(search, admin.get("/organizations/idorg/search/role"), 404)
    check(nodes, admin.delete("/organizations/idorg/nodes/web1"))
    check("/organizations/{org}/clients/{name}", admin.delete("/organizations/idorg/clients/web1"))


def test_authentication_errors_match(server, admin):
    jobs = "/organizations/{org}/pushy/jobs"
    r = httpx.get(f"{server.url}/organizations/apiorg/pushy/jobs", timeout=10)
    assert r.status_code == 400 and check(jobs, r)
    stranger = Chef(server.url, "nobody", admin.key_pem)
    r = stranger.get("/organizations/apiorg/pushy/jobs")
    assert r.status_code == 401 and check(jobs, r)
    r = admin.get("/organizations/apiorg/pushy/jobs", headers={"X-Ops-Timestamp": "yesterday"})
    assert r.status_code in (400, 401) and check(jobs, r)
    outsider = admin.post("/users", {"username": "outsider", "create_key": True})
    outsider = Chef(server.url, "outsider", outsider.json()["chef_key"]["private_key"])
    r = outsider.get("/organizations/apiorg/pushy/jobs")
    assert r.status_code == 403 and check(jobs, r)
    r = admin.get("/organizations/nosuchorg/pushy/jobs")
    assert r.status_code == 404 and check(jobs, r)
    r = admin.get("/organizations/apiorg/pushy/jobs", headers={"Accept": "text/html"})
    assert r.status_code == 406 and check(jobs, r)
    ws = httpx.get(f"{server.url}/organizations/apiorg/pushy/ws", timeout=10)
    assert ws.status_code == 400 and check("/organizations/{org}/pushy/ws", ws)


def test_push_job_responses_match(server, zctx):
    org = "jobsorg"
    admin, keys = setup_org(server, org, ("n1",))
    node = Node(server, org, "n1", keys["n1"], ctx=zctx)
    try:
        node.connect()
        join_node(node)
        _push_job_responses(admin, org, node)
    finally:
        node.close()


def _push_job_responses(admin: Chef, org: str, node: Node) -> None:
    p = "/organizations/{org}/pushy"
    base = f"/organizations/{org}/pushy"
    check(p + "/config/{node}", node.fetch_config())
    check(p + "/connect/{node}", admin.get(f"{base}/connect/n1?ccpk={node.curve_public.decode()}"))
    check(p + "/config/{node}", admin.get(f"{base}/config/n1"), 400)  # Missing ccpk: 400
    check(p + "/config/{node}", admin.get(f"{base}/config/n1?ccpk=short"), 401)  # Bad ccpk: 401
    states = check(p + "/node_states", admin.get(f"{base}/node_states"))
    assert states == [{"node_name": "n1", "availability": "available"}]
    check(p + "/node_states/{node}", admin.get(f"{base}/node_states/n1"))
    check(p + "/node_states/{node}", admin.get(f"{base}/node_states/ghost"))

    jobs = p + "/jobs"
    for bad in ({"command": "x", "nodes": []}, {"command": "x", "nodes": ["n1"], "extra": 1}):
        r = admin.post(f"{base}/jobs", bad)
        assert r.status_code == 400 and check(jobs, r)
    r = admin.post(f"{base}/jobs", raw=b"{}", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and check(jobs, r)

    spec = {"command": "chef-client", "nodes": ["n1"], "capture_output": True}
    r = admin.post(f"{base}/jobs", {**spec, "env": {"A": "b"}, "file": "raw:hello", "dir": "/"})
    created = check(jobs, r)
    assert r.headers["Location"] == created["uri"]
    job_id = created["id"]
    run_to_success(node, job_id, stdout="out\n", stderr="")
    wait_job(admin, org, job_id, "complete", (node,))
    job = p + "/jobs/{job_id}"
    assert "file_specified" in check(job, admin.get(f"{base}/jobs/{job_id}"))
    assert check(job, admin.get(f"{base}/jobs/{job_id}?include_file=true"))["file"] == "raw:hello"
    check(job, admin.get(f"{base}/jobs/{'0' * 32}"), 404)
    out = p + "/jobs/{job_id}/output/{node}/{channel}"
    octets = {"Accept": "application/octet-stream"}
    r = admin.get(f"{base}/jobs/{job_id}/output/n1/stdout", headers=octets)
    assert r.status_code == 200 and r.content == b"out\n"
    check(out, r)
    check(out, admin.get(f"{base}/jobs/{job_id}/output/n1/stdin", headers=octets), 404)
    check(out, admin.get(f"{base}/jobs/{job_id}/output/n2/stderr", headers=octets), 404)
    check(out, admin.get(f"{base}/jobs/{job_id}/output/n1/stdout"), 406)  # Accept: JSON -> 406
    listed = check(jobs, admin.get(f"{base}/jobs"))
    assert [j["id"] for j in listed] == [job_id]

    # a live job: abort it (200), then again (409)
    live = post_job(admin, org, ["n1"])
    abort = p + "/jobs/{job_id}/abort"
    assert check(abort, admin.post(f"{base}/jobs/{live}/abort"))["status"] == "aborted"
    check(abort, admin.post(f"{base}/jobs/{live}/abort"), 409)
    check(abort, admin.post(f"{base}/jobs/{'f' * 32}/abort"), 404)
    node.answer_abort()

    # SSE: every event's data matches the schema x-sse-events gives for its name
    for template, path in (
        (p + "/job_status_feed/{job_id}", f"{base}/job_status_feed/{live}"),
        (p + "/jobs_status_feed/{job_id}", f"{base}/jobs_status_feed/{job_id}"),
        (p + "/job_status_feed", f"{base}/job_status_feed"),
        (p + "/jobs_status_feed", f"{base}/jobs_status_feed"),
    ):
        org_feed = "{job_id}" not in template
        events = _read_feed(admin, template, path, "bogus" if org_feed else None)
        assert events, template
    feed = p + "/job_status_feed/{job_id}"
    sse = {"Accept": "text/event-stream"}
    check(feed, admin.get(f"{base}/job_status_feed/{'0' * 32}", headers=sse), 404)
    check(feed, admin.get(f"{base}/job_status_feed/{live}"), 406)  # Accept: application/json


def _read_feed(admin: Chef, template: str, path: str, last_id: str | None) -> list:
    """The events of a feed until it ends or is quiet, each validated against the document."""
    spec = deref(operation("GET", template)["responses"]["200"])
    headers = {"Accept": "text/event-stream", **admin.headers("GET", path, b"")}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    events = []
    with admin.http.stream("GET", path, headers=headers, timeout=10) as r:
        check(template, r, method="GET")
        deadline = time.monotonic() + 5
        lines = r.iter_lines()
        for name, _id, data in parse_sse(lines):
            schema = spec["x-sse-events"].get(name)
            assert schema is not None, f"{template}: undocumented event {name}"
            problems = errors(schema, data)
            assert not problems, f"{template} {name}: {problems}"
            events.append(name)
            if "{job_id}" not in template or time.monotonic() > deadline:
                break  # the org feed never ends: its replayed backlog is enough
    return events


def test_websocket_route_documents_its_messages():
    ws = operation("GET", "/organizations/{org}/pushy/ws")["x-websocket"]
    names = set(ws["server-messages"])
    assert {"hello", "job_event", "org_event", "node", "keepalive", "error", "subscribed"} == names
    sample = {"subscribe": {"jobs": "*", "nodes": False}}
    assert errors(ws["client-messages"]["subscribe"], sample) == []
    assert errors(ws["client-messages"]["subscribe"], {"subscribe": {"jobs": 1}})
