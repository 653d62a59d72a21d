"""Chef node search over real HTTP: ``/organizations/ORG/search[/node]`` (issue 4, "Node search").

Nodes are created through the nodes API as knife or chef-client would; then a table of queries
is run through GET, partial search through POST, paging, the errors a user can make, who may
search, and that an org's search never shows another org's nodes.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from appliance.core.keys import private_pem
from tests.support import Chef, error_of, new_user, server_fixture, setup_org

ORG = "searchorg"
OTHER = "otherorg"
SEARCH = f"/organizations/{ORG}/search/node"


def chef_node(name: str, env: str, run_list: list[str], **attrs) -> dict:
    return {
        "name": name,
        "chef_environment": env,
        "json_class": "Chef::Node",
        "chef_type": "node",
        "run_list": run_list,
        "automatic": attrs.get("automatic", {}),
        "normal": attrs.get("normal", {}),
        "default": attrs.get("default", {}),
        "override": attrs.get("override", {}),
    }


NODES = [
    chef_node(
        "web1",
        "prod",
        ["role[web]", "recipe[nginx::default]"],
        automatic={
            "platform": "ubuntu",
            "ipaddress": "10.0.0.11",
            "kernel": {"release": "5.15.0", "machine": "x86_64"},
            "cpu": {"total": 4},
        },
        normal={"tags": ["blue", "canary"]},
        default={"port": 80},
        override={"port": 8080},
    ),
    chef_node(
        "web2",
        "prod",
        ["role[web]", "nginx"],  # a bare recipe name: stored as recipe[nginx]
        automatic={
            "platform": "ubuntu",
            "ipaddress": "10.0.0.12",
            "kernel": {"release": "5.4.0", "machine": "x86_64"},
            "cpu": {"total": 8},
        },
        normal={"tags": ["blue"]},
        default={"port": 80},
    ),
    chef_node(
        "db1",
        "prod",
        ["role[db]", "recipe[postgresql::server]"],
        automatic={
            "platform": "centos",
            "ipaddress": "10.0.1.5",
            "kernel": {"release": "3.10.0", "machine": "x86_64"},
            "cpu": {"total": 16},
        },
        normal={"tags": ["green"]},
    ),
    chef_node(
        "db2",
        "staging",
        ["role[db]"],
        automatic={
            "platform": "centos",
            "ipaddress": "10.0.1.6",
            "kernel": {"release": "4.18.0", "machine": "aarch64"},
            "cpu": {"total": 32},
        },
    ),
    chef_node(
        "cache-1",
        "staging",
        ["role[cache]", "recipe[redis]"],
        automatic={"platform": "debian", "ipaddress": "192.168.1.10", "cpu": {"total": 2}},
        normal={"tags": ["red", "canary"], "description": "in memory store"},
    ),
    chef_node("lb1", "prod", [], automatic={"roles": ["lb"], "ipaddress": "10.0.0.1"}),
]
ALL = {n["name"] for n in NODES}

srv = server_fixture("search")


@pytest.fixture(scope="module")
def world(srv):
    admin, keys = setup_org(srv, ORG, ("web1",))
    for body in NODES:
        r = admin.post(f"/organizations/{ORG}/nodes", body)
        assert r.status_code == 201, r.text
    # another org with nodes of the same and of other names
    r = admin.post("/organizations", {"name": OTHER, "full_name": OTHER})
    assert r.status_code == 201, r.text
    other_validator = Chef(srv.url, f"{OTHER}-validator", r.json()["private_key"])
    for body in (chef_node("web1", "prod", ["role[web]"]), chef_node("elsewhere", "prod", [])):
        r = admin.post(f"/organizations/{OTHER}/nodes", body)
        assert r.status_code == 201, r.text
    return {
        "admin": admin,
        "reader": new_user(admin, "reader", ORG),
        "outsider": new_user(admin, "outsider", OTHER),
        "client": Chef(srv.url, "web1", keys["web1"]),
        "other_validator": other_validator,
    }


def found(chef: Chef, query: str | None, path: str = SEARCH, **params) -> set[str]:
    r = get(chef, query, path, **params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == len(body["rows"]), body
    return {row["name"] for row in body["rows"]}


def get(chef: Chef, query: str | None, path: str = SEARCH, **params) -> httpx.Response:
    if query is not None:
        params = {"q": query, **params}
    qs = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())
    return chef.get(f"{path}?{qs}" if qs else path)


TABLE = [
    ("*:*", ALL),
    ("role:web", {"web1", "web2"}),
    ("roles:lb", {"lb1"}),
    ("recipes:nginx", {"web2"}),
    ("recipes:nginx\\:\\:default", {"web1"}),
    ("recipe:postgresql*", {"db1"}),
    ("run_list:role\\[cache\\]", {"cache-1"}),
    ("chef_environment:staging", {"db2", "cache-1"}),
    ("tags:canary", {"web1", "cache-1"}),
    ("kernel_machine:aarch64", {"db2"}),
    ("machine:x86_64", {"web1", "web2", "db1"}),
    ("kernel_release:5.*", {"web1", "web2"}),
    ("port:8080", {"web1"}),  # override beats default
    ("ipaddress:10.0.?.1*", {"web1", "web2", "lb1"}),
    ("name:web? OR name:db?", {"web1", "web2", "db1", "db2"}),
    ("role:web AND NOT tags:canary", {"web2"}),
    ("role:web -tags:canary", {"web2"}),
    ("(role:db OR role:cache) AND chef_environment:staging", {"db2", "cache-1"}),
    ("chef_environment:prod && !role:web", {"db1", "lb1"}),
    ("cpu_total:[8 TO *]", {"web2", "db1", "db2"}),
    ("cpu_total:{2 TO 16}", {"web1", "web2"}),
    ('description:"in memory store"', {"cache-1"}),
    ("canary", {"web1", "cache-1"}),  # a bare term: any field
    ("platform:Ubuntu", set()),  # case-sensitive
    ("role:nonesuch", set()),
]


@pytest.mark.parametrize("query,expected", TABLE, ids=[q for q, _ in TABLE])
def test_query_table_over_http(world, query, expected):
    assert found(world["admin"], query) == expected


def test_response_shape_and_full_node_rows(srv, world):
    r = get(world["admin"], "name:web2")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert list(body) == ["total", "start", "rows"]
    assert body["total"] == 1 and body["start"] == 0
    row = body["rows"][0]
    assert row == world["admin"].get(f"/organizations/{ORG}/nodes/web2").json()
    assert row["run_list"] == ["role[web]", "recipe[nginx]"] and row["normal"]["tags"] == ["blue"]


def test_missing_q_means_everything_and_knife_double_encoding_is_understood(world):
    assert found(world["admin"], None) == ALL
    # Chef's search client encodes the query once more; the server decodes twice, as erchef
    twice = quote(quote("role:web AND tags:blue", safe=""), safe="")
    r = world["admin"].get(f"{SEARCH}?q={twice}")
    assert r.status_code == 200, r.text
    assert {row["name"] for row in r.json()["rows"]} == {"web1", "web2"}


def test_paging_and_sort(world):
    admin = world["admin"]
    r = get(admin, "*:*", start=1, rows=2)
    body = r.json()
    assert body["total"] == 6 and body["start"] == 1
    assert [row["name"] for row in body["rows"]] == sorted(ALL)[1:3]
    body = get(admin, "*:*", start=10).json()
    assert body["total"] == 6 and body["rows"] == []
    body = get(admin, "cpu_total:*", sort="cpu_total desc").json()
    assert [row["name"] for row in body["rows"]] == ["db2", "db1", "web2", "web1", "cache-1"]
    body = get(admin, "*:*", sort="X_CHEF_id_CHEF_X asc", rows=3).json()  # what Chef sends
    assert [row["name"] for row in body["rows"]] == sorted(ALL)[:3]


@pytest.mark.parametrize(
    "params,message",
    [
        ({"start": "x"}, "invalid 'start' value: 'x'"),
        ({"start": "-1"}, "invalid 'start' value: '-1'"),
        ({"rows": "1.5"}, "invalid 'rows' value: '1.5'"),
        ({"rows": "-3"}, "invalid 'rows' value: '-3'"),
        ({"sort": "name sideways"}, "invalid 'sort' value: 'name sideways'"),
    ],
)
def test_bad_paging_parameters_are_400(world, params, message):
    r = get(world["admin"], "*:*", **params)
    assert r.status_code == 400, r.text
    assert error_of(r)[0].startswith(message)


@pytest.mark.parametrize(
    "query,fragment",
    [
        ("(role:web", "unbalanced parenthesis: '(' is never closed at position 0"),
        ("role:web)", "unbalanced parenthesis: ')' has no matching '(' at position 8"),
        ("recipes:nginx::default", "unexpected ':' (escape it as '\\:' in a value) at position 13"),
        ('name:"web', "unterminated quoted phrase at position 5"),
        ("cpu_total:[1 TO", "unterminated range: '[' is never closed at position 10"),
        ("role:web AND", "'AND' must be followed by a term, not end of query at position 12"),
        ("", "empty query at position 0"),
    ],
)
def test_malformed_query_is_400_pointing_at_the_error(world, query, fragment):
    r = get(world["admin"], query)
    assert r.status_code == 400, r.text
    (message,) = error_of(r)
    assert message == f"invalid search query: '{query}': {fragment}"


def test_partial_search(srv, world):
    spec = {"name": ["name"], "ip": ["ipaddress"], "kernel": ["kernel", "release"]}
    spec |= {"port": ["port"], "none": ["no", "such"], "env": ["chef_environment"]}
    path = f"{SEARCH}?q={quote('role:web', safe='')}"
    for body in (spec, {"filter_result": spec}):  # Chef's bare mapping and the wrapped form
        r = world["admin"].post(path, body)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "total": 2,
            "start": 0,
            "rows": [
                {
                    "url": f"{srv.url}/organizations/{ORG}/nodes/web1",
                    "data": {
                        "name": "web1",
                        "ip": "10.0.0.11",
                        "kernel": "5.15.0",
                        "port": 8080,
                        "none": None,
                        "env": "prod",
                    },
                },
                {
                    "url": f"{srv.url}/organizations/{ORG}/nodes/web2",
                    "data": {
                        "name": "web2",
                        "ip": "10.0.0.12",
                        "kernel": "5.4.0",
                        "port": 80,
                        "none": None,
                        "env": "prod",
                    },
                },
            ],
        }
    r = world["admin"].post(f"{SEARCH}?q=*:*&rows=1&start=5", {"n": ["name"]})
    assert r.json()["total"] == 6 and r.json()["rows"] == [
        {"url": f"{srv.url}/organizations/{ORG}/nodes/web2", "data": {"n": "web2"}}
    ]


@pytest.mark.parametrize("body", [["name"], {"a": "name"}, {"a": [1]}, "x"])
def test_bad_partial_search_body_is_400(world, body):
    r = world["admin"].post(f"{SEARCH}?q=*:*", body)
    assert r.status_code == 400, r.text
    assert error_of(r) == ["invalid partial search request body"]
    r = world["admin"].post(f"{SEARCH}?q=*:*", raw=b"{not json")
    assert r.status_code == 400 and error_of(r) == ["invalid partial search request body"]


def test_saved_node_is_found_by_its_new_attributes(world):
    admin = world["admin"]
    body = chef_node("fresh", "prod", ["role[new]"], normal={"tags": ["first"]})
    assert admin.post(f"/organizations/{ORG}/nodes", body).status_code == 201
    try:
        assert found(admin, "tags:first") == {"fresh"}
        body["normal"]["tags"] = ["second"]
        assert admin.put(f"/organizations/{ORG}/nodes/fresh", body).status_code == 200
        assert found(admin, "tags:first") == set()
        assert found(admin, "tags:second") == {"fresh"}
    finally:
        assert admin.delete(f"/organizations/{ORG}/nodes/fresh").status_code == 200
    assert found(admin, "role:new") == set()


def test_index_list_and_unknown_index(srv, world):
    r = world["reader"].get(f"/organizations/{ORG}/search")
    assert r.status_code == 200, r.text
    assert r.json() == {"node": f"{srv.url}{SEARCH}"}
    r = get(world["admin"], "*:*", path=f"/organizations/{ORG}/search/role")
    assert r.status_code == 404
    (message,) = error_of(r)
    assert "role" in message and "only nodes" in message


def test_org_readers_may_search(world):
    assert found(world["reader"], "role:db") == {"db1", "db2"}  # a user of the org
    assert found(world["client"], "role:db") == {"db1", "db2"}  # a node (client) of the org


def test_others_may_not_search(srv, world):
    r = get(world["outsider"], "*:*")
    assert r.status_code == 403
    assert error_of(r) == [f"'outsider' is not associated with organization '{ORG}'"]
    # the validator may only register clients, not read the org's objects
    r = get(world["other_validator"], "*:*", path=f"/organizations/{OTHER}/search/node")
    assert r.status_code == 403 and error_of(r) == ["missing read permission"]
    r = httpx.get(f"{srv.url}{SEARCH}?q=*:*", timeout=30)  # unsigned
    assert r.status_code == 400
    assert error_of(r)[0].startswith("missing required authentication header(s)")
    stranger_key = private_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    stranger = Chef(srv.url, "reader", stranger_key)  # a signature by the wrong key
    r = get(stranger, "*:*")
    assert r.status_code == 401 and error_of(r) == ["Invalid signature for user or client 'reader'"]
    r = get(world["admin"], "*:*", path="/organizations/nosuchorg/search/node")
    assert r.status_code == 404
    assert error_of(r) == ["organization 'nosuchorg' does not exist."]


def test_an_orgs_search_never_shows_another_orgs_nodes(world):
    admin = world["admin"]
    assert found(admin, "*:*") == ALL
    assert "elsewhere" not in found(admin, "name:elsewhere OR *:*")
    assert found(admin, "*:*", path=f"/organizations/{OTHER}/search/node") == {
        "web1",
        "elsewhere",
    }
    r = get(admin, "name:web1", path=f"/organizations/{OTHER}/search/node")
    assert [row["run_list"] for row in r.json()["rows"]] == [["role[web]"]]
    assert (
        get(world["outsider"], "*:*", path=f"/organizations/{OTHER}/search/node").json()["total"]
        == 2
    )
