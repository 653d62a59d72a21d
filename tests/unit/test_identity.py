"""The identity authority: every route's statuses and shapes, authorization, replay."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core import identity as idn
from appliance.core.identity import Principal
from appliance.core.keys import generate_rsa, private_pem, public_pem

BASE = "https://chef.test"
GUID = "0123456789abcdef0123456789abcdef"
NOW = 1_700_000_000.0

_K1, _K2, _K3 = (generate_rsa(1024) for _ in range(3))
PAIR1 = (private_pem(_K1), public_pem(_K1))
PAIR2 = (private_pem(_K2), public_pem(_K2))
PAIR3 = (private_pem(_K3), public_pem(_K3))

PIVOTAL = Principal("pivotal", "user", True, None)
ALICE = Principal("alice", "user", False, None)  # acme admin
BOB = Principal("bob", "user", False, None)  # acme member
CAROL = Principal("carol", "user", False, None)  # exists, not associated
NODE1 = Principal("node1", "client", False, "acme")
NODE2 = Principal("node2", "client", False, "acme")
VALIDATOR = Principal("acme-validator", "client", False, "acme")
STRANGER = Principal("node1", "client", False, "other")  # same name, another org


class World:
    """State plus log; every call checks the handler left the state untouched."""

    def __init__(self) -> None:
        self.state = idn.IdentityState()
        self.log: list[dict] = []

    def commit(self, records: list[dict]) -> None:
        for rec in records:
            self.log.append(copy.deepcopy(rec))
            idn.apply(self.state, rec)

    def call(self, handler, *args, **kwargs) -> idn.Result:
        before = copy.deepcopy(self.state)
        result = handler(self.state, *args, **kwargs)
        assert self.state == before, "handler mutated the state"
        if result.status >= 300:
            assert result.records == []
            assert isinstance(result.body["error"], list)
            assert all(isinstance(m, str) for m in result.body["error"])
        self.commit(result.records)
        return result


def _org(w: World, requester: Principal, body: object, pair=PAIR1) -> idn.Result:
    return w.call(
        idn.create_org,
        requester,
        body,
        guid=GUID,
        validator_key_pem_private=pair[0],
        validator_key_pem_public=pair[1],
        base_url=BASE,
    )


@pytest.fixture
def w() -> Iterator[World]:
    """pivotal; org acme (alice admin, bob member), carol unassociated; clients node1/node2;
    org other with a client node1."""
    w = World()
    w.commit(idn.bootstrap_superuser(w.state, PAIR1[1]))
    assert _org(w, PIVOTAL, {"name": "acme", "full_name": "Acme"}).status == 201
    assert _org(w, PIVOTAL, {"name": "other", "full_name": "Other"}).status == 201
    for name in ("alice", "bob", "carol"):
        r = w.call(
            idn.create_user,
            PIVOTAL,
            {"username": name, "public_key": PAIR2[1]},
            new_key=None,
            base_url=BASE,
        )
        assert r.status == 201
    for name in ("alice", "bob"):
        r = w.call(idn.associate_user, PIVOTAL, "acme", {"username": name}, base_url=BASE)
        assert r.status == 201
    assert w.call(idn.put_group, PIVOTAL, "acme", "admins", {"users": ["alice"]}).status == 200
    for org, name in (("acme", "node1"), ("acme", "node2"), ("other", "node1")):
        r = w.call(
            idn.create_client,
            PIVOTAL,
            org,
            {"name": name, "public_key": PAIR3[1]},
            new_key=None,
            base_url=BASE,
        )
        assert r.status == 201
    yield w
    assert idn.replay(w.log) == w.state, "replaying the log must rebuild the state"


def _forbidden(r: idn.Result, what: str) -> None:
    assert r.status == 403
    assert r.body == {"error": [f"missing {what} permission"]}


def _not_associated(r: idn.Result, name: str, org: str = "acme") -> None:
    assert r.status == 403
    assert r.body == {"error": [f"'{name}' is not associated with organization '{org}'"]}


# --------------------------------------------------------------------------- reducer, bootstrap


def test_bootstrap_superuser_once():
    state = idn.IdentityState()
    recs = idn.bootstrap_superuser(state, PAIR1[1])
    for r in recs:
        idn.apply(state, r)
    assert state.users["pivotal"].superuser
    assert idn.bootstrap_superuser(state, PAIR1[1]) == []


def test_apply_rejects_unknown_record():
    with pytest.raises(ValueError):
        idn.apply(idn.IdentityState(), {"type": "job_created"})
    assert "node_saved" in idn.RECORD_TYPES and "job_created" not in idn.RECORD_TYPES


def test_records_are_json_values(w):
    import json

    assert json.loads(json.dumps(w.log)) == w.log


def test_needs_new_key():
    assert idn.needs_new_key("create_org", None)
    assert idn.needs_new_key("create_user", {"create_key": True})
    assert idn.needs_new_key("create_client", {"create_key": True})
    assert idn.needs_new_key("add_key", {"create_key": True})
    assert not idn.needs_new_key("create_user", {"create_key": "true"})
    assert not idn.needs_new_key("create_client", {"public_key": "x"})
    assert not idn.needs_new_key("create_client", ["create_key"])
    assert not idn.needs_new_key("create_group", {"create_key": True})


# --------------------------------------------------------------------------- organizations


def test_create_org_shape_and_effects(w):
    r = _org(w, PIVOTAL, {"name": "zeta", "full_name": "Zeta Inc"}, pair=PAIR2)
    assert r.status == 201
    assert r.body == {
        "uri": f"{BASE}/organizations/zeta",
        "clientname": "zeta-validator",
        "private_key": PAIR2[0],
    }
    org = w.state.orgs["zeta"]
    assert (org.name, org.full_name, org.guid) == ("zeta", "Zeta Inc", GUID)
    assert set(org.groups) == {"admins", "users", "clients"}
    v = org.clients["zeta-validator"]
    assert v.validator and v.keys["default"].public_key == PAIR2[1]
    assert "zeta-validator" not in org.groups["clients"].clients


@pytest.mark.parametrize(
    "body, message",
    [
        ([], "JSON body must be an object"),
        ({"full_name": "X"}, "Field 'name' missing"),
        ({"name": "Zeta", "full_name": "X"}, "Field 'name' invalid"),
        ({"name": "ze ta", "full_name": "X"}, "Field 'name' invalid"),
        ({"name": 5, "full_name": "X"}, "Field 'name' invalid"),
        ({"name": "zeta"}, "Field 'full_name' missing"),
        ({"name": "zeta", "full_name": 3}, "Field 'full_name' invalid"),
        ({"name": "zeta", "full_name": ""}, "Field 'full_name' invalid"),
    ],
)
def test_create_org_bad_bodies(w, body, message):
    r = _org(w, PIVOTAL, body)
    assert (r.status, r.body) == (400, {"error": [message]})


def test_create_org_conflict_and_forbidden(w):
    r = _org(w, PIVOTAL, {"name": "acme", "full_name": "Again"})
    assert (r.status, r.body) == (409, {"error": ["organization 'acme' already exists"]})
    for who in (ALICE, BOB, NODE1, VALIDATOR):
        _forbidden(_org(w, who, {"name": "zeta", "full_name": "Z"}), "create")
    assert "zeta" not in w.state.orgs


def test_create_org_rejects_bad_guid(w):
    with pytest.raises(ValueError):
        idn.create_org(
            w.state,
            PIVOTAL,
            {"name": "z", "full_name": "Z"},
            guid="xyz",
            validator_key_pem_private="a",
            validator_key_pem_public="b",
            base_url=BASE,
        )


def test_get_org(w):
    expected = {"name": "acme", "full_name": "Acme", "guid": GUID}
    for who in (PIVOTAL, ALICE, BOB, NODE1):
        assert w.call(idn.get_org, who, "acme") == (200, expected, [])
    r = w.call(idn.get_org, PIVOTAL, "nope")
    assert (r.status, r.body) == (404, {"error": ["organization 'nope' does not exist."]})
    _not_associated(w.call(idn.get_org, CAROL, "acme"), "carol")
    _not_associated(w.call(idn.get_org, STRANGER, "acme"), "node1")
    _forbidden(w.call(idn.get_org, VALIDATOR, "acme"), "read")


def test_list_orgs(w):
    r = w.call(idn.list_orgs, PIVOTAL, base_url=BASE)
    assert r.body == {
        "acme": f"{BASE}/organizations/acme",
        "other": f"{BASE}/organizations/other",
    }
    _forbidden(w.call(idn.list_orgs, ALICE, base_url=BASE), "read")


# --------------------------------------------------------------------------- users


def test_create_user_with_create_key(w):
    body = {
        "username": "dave",
        "display_name": "Dave D",
        "email": "dave@example.com",
        "first_name": "Dave",
        "last_name": "D",
        "create_key": True,
        "password": "ignored",
    }
    r = w.call(idn.create_user, PIVOTAL, body, new_key=PAIR2, base_url=BASE)
    assert r.status == 201
    assert r.body == {
        "uri": f"{BASE}/users/dave",
        "chef_key": {
            "name": "default",
            "public_key": PAIR2[1],
            "private_key": PAIR2[0],
            "expiration_date": "infinity",
        },
    }
    g = w.call(idn.get_user, Principal("dave", "user"), "dave")
    assert g.body == {
        "username": "dave",
        "display_name": "Dave D",
        "email": "dave@example.com",
        "first_name": "Dave",
        "last_name": "D",
    }


def test_create_user_with_public_key_or_none(w):
    r = w.call(
        idn.create_user,
        PIVOTAL,
        {"username": "eve", "public_key": PAIR3[1]},
        new_key=None,
        base_url=BASE,
    )
    assert r.status == 201 and "private_key" not in r.body["chef_key"]
    assert r.body["chef_key"]["public_key"] == PAIR3[1]
    r = w.call(idn.create_user, PIVOTAL, {"username": "f.g-h_i"}, new_key=None, base_url=BASE)
    assert r.status == 201 and "chef_key" not in r.body
    assert w.state.users["f.g-h_i"].keys == {}
    assert w.state.users["f.g-h_i"].display_name == "f.g-h_i"


def test_create_user_key_requested_without_material_is_a_bug(w):
    with pytest.raises(ValueError):
        idn.create_user(
            w.state, PIVOTAL, {"username": "x", "create_key": True}, new_key=None, base_url=BASE
        )


@pytest.mark.parametrize(
    "body, message",
    [
        ("alice", "JSON body must be an object"),
        ({}, "Field 'username' missing"),
        ({"username": "bad name"}, "Field 'username' invalid"),
        ({"username": ["x"]}, "Field 'username' invalid"),
        ({"username": "x" * 256}, "Field 'username' invalid"),
        ({"username": "x", "email": 3}, "Field 'email' invalid"),
        ({"username": "x", "create_key": "yes"}, "Field 'create_key' invalid"),
        ({"username": "x", "public_key": 7}, "Field 'public_key' invalid"),
    ],
)
def test_create_user_bad_bodies(w, body, message):
    r = w.call(idn.create_user, PIVOTAL, body, new_key=PAIR2, base_url=BASE)
    assert (r.status, r.body) == (400, {"error": [message]})


def test_create_user_bad_key_combinations(w):
    r = w.call(
        idn.create_user,
        PIVOTAL,
        {"username": "x", "create_key": True, "public_key": PAIR2[1]},
        new_key=PAIR2,
        base_url=BASE,
    )
    assert r.status == 400
    assert r.body["error"][0].startswith("Field 'create_key' invalid")
    r = w.call(
        idn.create_user,
        PIVOTAL,
        {"username": "x", "public_key": "not a pem"},
        new_key=None,
        base_url=BASE,
    )
    assert r.status == 400 and r.body["error"][0].startswith("Field 'public_key' invalid")


def test_create_user_conflict_and_forbidden(w):
    r = w.call(idn.create_user, PIVOTAL, {"username": "bob"}, new_key=None, base_url=BASE)
    assert (r.status, r.body) == (409, {"error": ["user 'bob' already exists"]})
    for who in (ALICE, BOB, NODE1, VALIDATOR):
        r = w.call(idn.create_user, who, {"username": "zed"}, new_key=None, base_url=BASE)
        _forbidden(r, "create")


def test_get_user(w):
    assert w.call(idn.get_user, BOB, "bob").body["username"] == "bob"
    assert w.call(idn.get_user, PIVOTAL, "bob").status == 200
    _forbidden(w.call(idn.get_user, ALICE, "bob"), "read")
    _forbidden(w.call(idn.get_user, Principal("bob", "client", False, "acme"), "bob"), "read")
    _forbidden(w.call(idn.get_user, BOB, "nobody"), "read")
    r = w.call(idn.get_user, PIVOTAL, "nobody")
    assert (r.status, r.body) == (404, {"error": ["user 'nobody' not found"]})


def test_list_users(w):
    r = w.call(idn.list_users, PIVOTAL, base_url=BASE)
    assert list(r.body) == ["alice", "bob", "carol", "pivotal"]
    assert r.body["bob"] == f"{BASE}/users/bob"
    _forbidden(w.call(idn.list_users, ALICE, base_url=BASE), "read")


def test_associate_user(w):
    r = w.call(idn.associate_user, PIVOTAL, "acme", {"username": "carol"}, base_url=BASE)
    assert r.status == 201 and r.body == {"uri": f"{BASE}/organizations/acme/users/carol"}
    assert "carol" in w.state.orgs["acme"].users
    assert "carol" in w.state.orgs["acme"].groups["users"].users
    assert idn.is_org_member(w.state, "acme", CAROL)
    r = w.call(idn.associate_user, PIVOTAL, "acme", {"username": "carol"}, base_url=BASE)
    assert r.status == 409 and r.body["error"][0].endswith("already exists")


def test_associate_user_errors(w):
    r = w.call(idn.associate_user, PIVOTAL, "acme", {"username": "ghost"}, base_url=BASE)
    assert (r.status, r.body) == (404, {"error": ["user 'ghost' not found"]})
    r = w.call(idn.associate_user, PIVOTAL, "nope", {"username": "carol"}, base_url=BASE)
    assert r.status == 404
    for body in ({}, {"username": 1}, ["carol"]):
        r = w.call(idn.associate_user, PIVOTAL, "acme", body, base_url=BASE)
        assert r.status == 400
    for who in (ALICE, BOB, NODE1):
        r = w.call(idn.associate_user, who, "acme", {"username": "carol"}, base_url=BASE)
        _forbidden(r, "create")


def test_list_org_users(w):
    r = w.call(idn.list_org_users, NODE1, "acme")
    assert r == (200, [{"user": {"username": "alice"}}, {"user": {"username": "bob"}}], [])
    _not_associated(w.call(idn.list_org_users, CAROL, "acme"), "carol")
    _forbidden(w.call(idn.list_org_users, VALIDATOR, "acme"), "read")
    assert w.call(idn.list_org_users, PIVOTAL, "nope").status == 404


# --------------------------------------------------------------------------- clients


def _client(w, who, body, org="acme", new_key=None):
    return w.call(idn.create_client, who, org, body, new_key=new_key, base_url=BASE)


def test_create_client_by_admin_with_create_key(w):
    r = _client(w, ALICE, {"name": "web1", "create_key": True}, new_key=PAIR2)
    assert r.status == 201
    assert r.body == {
        "uri": f"{BASE}/organizations/acme/clients/web1",
        "chef_key": {
            "name": "default",
            "public_key": PAIR2[1],
            "private_key": PAIR2[0],
            "expiration_date": "infinity",
        },
    }
    assert "web1" in w.state.orgs["acme"].groups["clients"].clients
    assert idn.is_org_member(w.state, "acme", Principal("web1", "client", False, "acme"))


def test_create_client_by_validator_bootstrap(w):
    r = _client(w, VALIDATOR, {"clientname": "web2", "public_key": PAIR2[1]})
    assert r.status == 201 and "private_key" not in r.body["chef_key"]
    assert not w.state.orgs["acme"].clients["web2"].validator
    _forbidden(_client(w, VALIDATOR, {"name": "v2", "validator": True}), "create")


def test_create_validator_client_by_admin(w):
    r = _client(w, ALICE, {"name": "v2", "validator": True})
    assert r.status == 201 and "chef_key" not in r.body
    assert w.state.orgs["acme"].clients["v2"].validator
    assert "v2" not in w.state.orgs["acme"].groups["clients"].clients


def test_create_client_errors(w):
    r = _client(w, ALICE, {"name": "node1"})
    assert (r.status, r.body) == (409, {"error": ["client 'node1' already exists"]})
    for body, msg in (
        ([], "JSON body must be an object"),
        ({}, "Field 'name' missing"),
        ({"name": "no/slash"}, "Field 'name' invalid"),
        ({"name": "x", "validator": "no"}, "Field 'validator' invalid"),
        ({"name": "x", "create_key": 1}, "Field 'create_key' invalid"),
    ):
        r = _client(w, ALICE, body, new_key=PAIR2)
        assert (r.status, r.body) == (400, {"error": [msg]})
    r = _client(w, ALICE, {"name": "x", "public_key": "-----BEGIN PUBLIC KEY-----\nxx"})
    assert r.status == 400
    assert _client(w, PIVOTAL, {"name": "x"}, org="nope").status == 404
    for who in (BOB, NODE1):
        _forbidden(_client(w, who, {"name": "x"}), "create")
    _not_associated(_client(w, CAROL, {"name": "x"}), "carol")
    _not_associated(_client(w, STRANGER, {"name": "x"}), "node1")


def test_get_and_list_clients(w):
    expected = {
        "name": "node1",
        "clientname": "node1",
        "orgname": "acme",
        "validator": False,
        "json_class": "Chef::ApiClient",
        "chef_type": "client",
    }
    for who in (PIVOTAL, ALICE, BOB, NODE1, NODE2):
        assert w.call(idn.get_client, who, "acme", "node1") == (200, expected, [])
    assert w.call(idn.get_client, VALIDATOR, "acme", "acme-validator").body["validator"] is True
    _forbidden(w.call(idn.get_client, VALIDATOR, "acme", "node1"), "read")
    r = w.call(idn.get_client, BOB, "acme", "ghost")
    assert (r.status, r.body) == (404, {"error": ["client 'ghost' not found"]})
    assert w.call(idn.get_client, BOB, "nope", "node1").status == 404
    r = w.call(idn.list_clients, BOB, "acme", base_url=BASE)
    assert r.body == {
        "acme-validator": f"{BASE}/organizations/acme/clients/acme-validator",
        "node1": f"{BASE}/organizations/acme/clients/node1",
        "node2": f"{BASE}/organizations/acme/clients/node2",
    }
    _forbidden(w.call(idn.list_clients, VALIDATOR, "acme", base_url=BASE), "read")
    _not_associated(w.call(idn.list_clients, CAROL, "acme", base_url=BASE), "carol")


def test_delete_client(w):
    w.call(idn.create_group, ALICE, "acme", {"groupname": "web"}, base_url=BASE)
    w.call(idn.put_group, ALICE, "acme", "web", {"clients": ["node2"]})
    for who in (BOB, NODE2, VALIDATOR):
        _forbidden(w.call(idn.delete_client, who, "acme", "node2"), "delete")
    r = w.call(idn.delete_client, ALICE, "acme", "node2")
    assert r.status == 200 and r.body["name"] == "node2" and r.body["orgname"] == "acme"
    org = w.state.orgs["acme"]
    assert "node2" not in org.clients
    assert all("node2" not in g.clients for g in org.groups.values())
    assert idn.lookup_keys(w.state, "acme", "node2") == []
    r = w.call(idn.delete_client, ALICE, "acme", "node2")
    assert (r.status, r.body) == (404, {"error": ["client 'node2' not found"]})
    assert w.call(idn.delete_client, PIVOTAL, "nope", "node2").status == 404


# --------------------------------------------------------------------------- keys


def _add_key(w, who, body, org="acme", actor="node1", new_key=None):
    return w.call(idn.add_key, who, org, actor, body, new_key=new_key, base_url=BASE)


def test_client_key_rotation(w):
    r = _add_key(w, NODE1, {"name": "k2", "public_key": PAIR1[1]})
    assert (r.status, r.body) == (201, {"uri": f"{BASE}/organizations/acme/clients/node1/keys/k2"})
    [(principal, pems)] = idn.lookup_keys(w.state, "acme", "node1")
    assert principal == NODE1 and pems == [PAIR3[1], PAIR1[1]]
    r = w.call(idn.delete_key, NODE1, "acme", "node1", "default")
    assert r == (
        200,
        {"name": "default", "public_key": PAIR3[1], "expiration_date": "infinity"},
        [{"type": "key_deleted", "org": "acme", "actor": "node1", "key_name": "default"}],
    )
    assert idn.lookup_keys(w.state, "acme", "node1")[0][1] == [PAIR1[1]]


def test_add_key_create_key_and_expiry(w):
    r = _add_key(
        w,
        ALICE,
        {"name": "gen", "create_key": True, "expiration_date": "2020-01-01T00:00:00Z"},
        new_key=PAIR2,
    )
    assert r.status == 201 and r.body["private_key"] == PAIR2[0]
    r = w.call(idn.list_keys, BOB, "acme", "node1", now=NOW, base_url=BASE)
    prefix = f"{BASE}/organizations/acme/clients/node1/keys"
    assert r.body == [
        {"name": "default", "uri": f"{prefix}/default", "expired": False},
        {"name": "gen", "uri": f"{prefix}/gen", "expired": True},
    ]
    assert idn.lookup_keys(w.state, "acme", "node1", now=NOW)[0][1] == [PAIR3[1]]
    assert len(idn.lookup_keys(w.state, "acme", "node1")[0][1]) == 2
    r = w.call(idn.get_key, NODE2, "acme", "node1", "gen")
    assert r.body == {
        "name": "gen",
        "public_key": PAIR2[1],
        "expiration_date": "2020-01-01T00:00:00Z",
    }


def test_key_errors(w):
    r = _add_key(w, ALICE, {"name": "default", "public_key": PAIR1[1]})
    assert (r.status, r.body) == (409, {"error": ["key 'default' already exists"]})
    for body, msg in (
        (None, "JSON body must be an object"),
        ({"public_key": PAIR1[1]}, "Field 'name' missing"),
        ({"name": "k"}, "Field 'public_key' missing"),
        (
            {"name": "k", "public_key": PAIR1[1], "expiration_date": "soon"},
            "Field 'expiration_date' invalid",
        ),
        (
            {"name": "k", "public_key": PAIR1[1], "expiration_date": "2020-13-01T00:00:00Z"},
            "Field 'expiration_date' invalid",
        ),
        (
            {"name": "k", "public_key": PAIR1[1], "expiration_date": 5},
            "Field 'expiration_date' invalid",
        ),
    ):
        r = _add_key(w, ALICE, body)
        assert (r.status, r.body) == (400, {"error": [msg]})
    assert _add_key(w, ALICE, {"name": "k", "public_key": PAIR1[1]}, actor="ghost").status == 404
    r = w.call(idn.get_key, ALICE, "acme", "node1", "nokey")
    assert (r.status, r.body) == (404, {"error": ["key 'nokey' not found"]})
    assert w.call(idn.delete_key, ALICE, "acme", "node1", "nokey").status == 404
    assert w.call(idn.list_keys, ALICE, "nope", "node1", now=NOW, base_url=BASE).status == 404
    r = w.call(idn.list_keys, ALICE, "acme", "ghost", now=NOW, base_url=BASE)
    assert r.status == 404


def test_key_permissions(w):
    body = {"name": "k", "public_key": PAIR1[1]}
    for who in (BOB, NODE2, VALIDATOR):
        _forbidden(_add_key(w, who, body), "update")
        _forbidden(w.call(idn.delete_key, who, "acme", "node1", "default"), "update")
    _forbidden(w.call(idn.list_keys, VALIDATOR, "acme", "node1", now=NOW, base_url=BASE), "read")
    _forbidden(w.call(idn.get_key, VALIDATOR, "acme", "node1", "default"), "read")
    _not_associated(_add_key(w, STRANGER, body), "node1")
    assert w.call(idn.list_keys, NODE1, "acme", "node1", now=NOW, base_url=BASE).status == 200


def test_user_keys(w):
    r = _add_key(w, ALICE, {"name": "laptop", "public_key": PAIR1[1]}, org=None, actor="alice")
    assert r.status == 201 and r.body == {"uri": f"{BASE}/users/alice/keys/laptop"}
    r = w.call(idn.list_keys, PIVOTAL, None, "alice", now=NOW, base_url=BASE)
    assert [k["name"] for k in r.body] == ["default", "laptop"]
    _forbidden(w.call(idn.list_keys, BOB, None, "alice", now=NOW, base_url=BASE), "read")
    _forbidden(
        _add_key(w, BOB, {"name": "x", "public_key": PAIR1[1]}, org=None, actor="alice"), "update"
    )
    alice_as_client = Principal("alice", "client", False, "acme")
    _forbidden(w.call(idn.get_key, alice_as_client, None, "alice", "default"), "read")
    assert w.call(idn.delete_key, ALICE, None, "alice", "laptop").status == 200
    assert w.call(idn.get_key, PIVOTAL, None, "ghost", "default").status == 404


def test_lookup_keys_client_first_then_user(w):
    r = _client(w, ALICE, {"name": "bob", "public_key": PAIR1[1]})
    assert r.status == 201
    found = idn.lookup_keys(w.state, "acme", "bob")
    assert found == [
        (Principal("bob", "client", False, "acme"), [PAIR1[1]]),
        (BOB, [PAIR2[1]]),
    ]
    assert idn.lookup_keys(w.state, None, "bob") == [(BOB, [PAIR2[1]])]
    assert idn.lookup_keys(w.state, "other", "bob") == [(BOB, [PAIR2[1]])]
    assert idn.lookup_keys(w.state, "acme", "ghost") == []
    assert idn.lookup_keys(w.state, "nope", "pivotal") == [(PIVOTAL, [PAIR1[1]])]
    # carol is not in acme but still listed: a good signature then gets 403, not 401
    assert idn.lookup_keys(w.state, "acme", "carol")[0][0] == CAROL


# --------------------------------------------------------------------------- groups


def _group(w, who, name, org="acme"):
    return w.call(idn.create_group, who, org, {"groupname": name}, base_url=BASE)


def test_group_create_list_get(w):
    r = _group(w, ALICE, "pushy_job_readers")
    assert r == (
        201,
        {"uri": f"{BASE}/organizations/acme/groups/pushy_job_readers"},
        [{"type": "group_created", "org": "acme", "name": "pushy_job_readers"}],
    )
    assert w.call(idn.create_group, ALICE, "acme", {"name": "alt"}, base_url=BASE).status == 201
    r = w.call(idn.list_groups, BOB, "acme", base_url=BASE)
    assert list(r.body) == ["admins", "alt", "clients", "pushy_job_readers", "users"]
    assert r.body["admins"] == f"{BASE}/organizations/acme/groups/admins"
    r = w.call(idn.get_group, NODE1, "acme", "clients")
    assert r.body == {
        "actors": ["node1", "node2"],
        "users": [],
        "clients": ["node1", "node2"],
        "groups": [],
        "orgname": "acme",
        "name": "clients",
        "groupname": "clients",
    }
    r = w.call(idn.get_group, BOB, "acme", "users")
    assert r.body["actors"] == ["alice", "bob"] and r.body["users"] == ["alice", "bob"]


def test_group_create_errors(w):
    r = _group(w, ALICE, "admins")
    assert (r.status, r.body) == (409, {"error": ["group 'admins' already exists"]})
    for body, msg in (
        ("x", "JSON body must be an object"),
        ({}, "Field 'groupname' missing"),
        ({"groupname": "Upper"}, "Field 'groupname' invalid"),
        ({"groupname": "a.b"}, "Field 'groupname' invalid"),
        ({"groupname": 1}, "Field 'groupname' invalid"),
    ):
        r = w.call(idn.create_group, ALICE, "acme", body, base_url=BASE)
        assert (r.status, r.body) == (400, {"error": [msg]})
    for who in (BOB, NODE1, VALIDATOR):
        _forbidden(_group(w, who, "g"), "create")
    _not_associated(_group(w, CAROL, "g"), "carol")
    assert _group(w, PIVOTAL, "g", org="nope").status == 404
    r = w.call(idn.get_group, BOB, "acme", "ghost")
    assert (r.status, r.body) == (404, {"error": ["group 'ghost' not found"]})
    _forbidden(w.call(idn.get_group, VALIDATOR, "acme", "admins"), "read")
    _forbidden(w.call(idn.list_groups, VALIDATOR, "acme", base_url=BASE), "read")


def test_put_group_nested_and_flat_forms(w):
    _group(w, ALICE, "ops")
    _group(w, ALICE, "web")
    body = {
        "groupname": "ops",
        "actors": {"users": ["bob"], "clients": ["node1"], "groups": ["web"]},
    }
    r = w.call(idn.put_group, ALICE, "acme", "ops", body)
    assert r.status == 200
    assert r.body == {
        "actors": ["bob", "node1"],
        "users": ["bob"],
        "clients": ["node1"],
        "groups": ["web"],
        "orgname": "acme",
        "name": "ops",
        "groupname": "ops",
    }
    assert r.body == w.call(idn.get_group, BOB, "acme", "ops").body
    # the GET shape round-trips (its "actors" list is ignored)
    again = w.call(idn.put_group, ALICE, "acme", "ops", dict(r.body))
    assert again.body == r.body
    # flat form, and missing lists mean empty
    r = w.call(idn.put_group, PIVOTAL, "acme", "web", {"clients": ["node2", "node2"]})
    assert r.body["clients"] == ["node2"] and r.body["users"] == [] and r.body["groups"] == []
    assert idn.in_group(w.state, "acme", "ops", NODE2)
    r = w.call(idn.put_group, ALICE, "acme", "ops", {"actors": {}})
    assert r.body["actors"] == [] and not idn.in_group(w.state, "acme", "ops", BOB)


@pytest.mark.parametrize(
    "body, prefix",
    [
        (["bob"], "JSON body must be an object"),
        ({"users": "bob"}, "Field 'users' invalid"),
        ({"users": [1]}, "Field 'users' invalid"),
        ({"actors": {"clients": "node1"}}, "Field 'clients' invalid"),
        ({"actors": 3}, "Field 'actors' invalid"),
        ({"users": ["carol"]}, "Field 'users' invalid: user 'carol'"),
        ({"clients": ["ghost"]}, "Field 'clients' invalid: client 'ghost'"),
        ({"groups": ["ghost"]}, "Field 'groups' invalid: group 'ghost'"),
        ({"groupname": "renamed"}, "Field 'groupname' invalid"),
        ({"groups": ["admins"]}, "Field 'groups' invalid: group 'admins' would contain itself"),
    ],
)
def test_put_group_bad_bodies(w, body, prefix):
    r = w.call(idn.put_group, ALICE, "acme", "admins", body)
    assert r.status == 400 and r.body["error"][0].startswith(prefix)


def test_put_group_cycle_rejected(w):
    for g in ("a", "b", "c"):
        _group(w, ALICE, g)
    assert w.call(idn.put_group, ALICE, "acme", "a", {"groups": ["b"]}).status == 200
    assert w.call(idn.put_group, ALICE, "acme", "b", {"groups": ["c"]}).status == 200
    r = w.call(idn.put_group, ALICE, "acme", "c", {"groups": ["a"]})
    assert r.status == 400 and "cycle" in r.body["error"][0]
    assert w.state.orgs["acme"].groups["c"].groups == set()
    # a diamond is not a cycle
    assert w.call(idn.put_group, ALICE, "acme", "a", {"groups": ["b", "c"]}).status == 200


def test_put_group_errors(w):
    assert w.call(idn.put_group, ALICE, "acme", "ghost", {}).status == 404
    assert w.call(idn.put_group, PIVOTAL, "nope", "admins", {}).status == 404
    for who in (BOB, NODE1, VALIDATOR):
        _forbidden(w.call(idn.put_group, who, "acme", "admins", {"users": ["bob"]}), "update")
    _not_associated(w.call(idn.put_group, CAROL, "acme", "admins", {}), "carol")


def test_delete_group(w):
    _group(w, ALICE, "inner")
    _group(w, ALICE, "outer")
    w.call(idn.put_group, ALICE, "acme", "inner", {"users": ["bob"]})
    w.call(idn.put_group, ALICE, "acme", "outer", {"groups": ["inner"]})
    assert idn.in_group(w.state, "acme", "outer", BOB)
    for who in (BOB, NODE1):
        _forbidden(w.call(idn.delete_group, who, "acme", "inner"), "delete")
    r = w.call(idn.delete_group, ALICE, "acme", "inner")
    assert r.status == 200 and r.body["users"] == ["bob"] and r.body["name"] == "inner"
    assert w.state.orgs["acme"].groups["outer"].groups == set()
    assert not idn.in_group(w.state, "acme", "outer", BOB)
    assert w.call(idn.delete_group, ALICE, "acme", "inner").status == 404
    for builtin in idn.BUILTIN_GROUPS:
        assert w.call(idn.delete_group, PIVOTAL, "acme", builtin).status == 400
    assert w.call(idn.delete_group, PIVOTAL, "nope", "outer").status == 404


def test_in_group_terminates_on_a_cycle_built_directly(w):
    w.commit(
        [
            {"type": "group_created", "org": "acme", "name": "x"},
            {"type": "group_created", "org": "acme", "name": "y"},
            {
                "type": "group_updated",
                "org": "acme",
                "name": "x",
                "users": [],
                "clients": [],
                "groups": ["y"],
            },
            {
                "type": "group_updated",
                "org": "acme",
                "name": "y",
                "users": ["bob"],
                "clients": [],
                "groups": ["x", "y", "ghost"],
            },
        ]
    )
    assert idn.in_group(w.state, "acme", "x", BOB)
    assert not idn.in_group(w.state, "acme", "x", ALICE)
    assert not idn.in_group(w.state, "acme", "x", NODE1)
    assert not idn.in_group(w.state, "acme", "missing", BOB)
    assert not idn.in_group(w.state, "nope", "x", BOB)


def test_in_group_clients_are_per_org(w):
    assert idn.in_group(w.state, "acme", "clients", NODE1)
    assert not idn.in_group(w.state, "acme", "clients", STRANGER)
    assert not idn.in_group(w.state, "acme", "clients", Principal("node1", "user"))


# --------------------------------------------------------------------------- nodes


def _node(w, who, body, org="acme"):
    return w.call(idn.create_node, who, org, body, base_url=BASE)


def test_create_node_defaults_and_run_list(w):
    body = {
        "name": "node1",
        "run_list": ["recipe[base]", "role[web]", "nginx::default", "apt@1.0.0"],
        "automatic": {"platform": "ubuntu", "ipaddress": "10.0.0.1"},
        "ignored": True,
    }
    r = _node(w, NODE1, body)
    assert (r.status, r.body) == (201, {"uri": f"{BASE}/organizations/acme/nodes/node1"})
    got = w.call(idn.get_node, BOB, "acme", "node1").body
    assert got == {
        "name": "node1",
        "chef_environment": "_default",
        "json_class": "Chef::Node",
        "chef_type": "node",
        "run_list": ["recipe[base]", "role[web]", "recipe[nginx::default]", "recipe[apt@1.0.0]"],
        "automatic": {"platform": "ubuntu", "ipaddress": "10.0.0.1"},
        "normal": {},
        "default": {},
        "override": {},
    }
    got["automatic"]["platform"] = "changed"  # a copy, not the state
    assert w.state.orgs["acme"].nodes["node1"]["automatic"]["platform"] == "ubuntu"
    body["automatic"]["platform"] = "mutated later"  # the record does not alias the body
    assert r.records[0]["node"]["automatic"]["platform"] == "ubuntu"


def test_create_node_permissions(w):
    _forbidden(_node(w, NODE1, {"name": "node2"}), "create")
    for who in (BOB, VALIDATOR):
        _forbidden(_node(w, who, {"name": "web"}), "create")
    _not_associated(_node(w, STRANGER, {"name": "node1"}), "node1")
    assert _node(w, ALICE, {"name": "web", "chef_environment": "prod"}).status == 201
    assert _node(w, PIVOTAL, {"name": "web2"}).status == 201
    r = _node(w, ALICE, {"name": "web"})
    assert (r.status, r.body) == (409, {"error": ["node 'web' already exists"]})
    assert _node(w, PIVOTAL, {"name": "x"}, org="nope").status == 404


@pytest.mark.parametrize(
    "body, message",
    [
        (["node1"], "JSON body must be an object"),
        ({}, "Field 'name' missing"),
        ({"name": "no spaces"}, "Field 'name' invalid"),
        ({"name": "n", "run_list": "recipe[x]"}, "Field 'run_list' invalid"),
        ({"name": "n", "run_list": ["recipe[x"]}, "Field 'run_list' invalid"),
        ({"name": "n", "run_list": [1]}, "Field 'run_list' invalid"),
        ({"name": "n", "normal": []}, "Field 'normal' invalid"),
        ({"name": "n", "override": "x"}, "Field 'override' invalid"),
        ({"name": "n", "chef_environment": "a b"}, "Field 'chef_environment' invalid"),
        ({"name": "n", "chef_environment": 1}, "Field 'chef_environment' invalid"),
        ({"name": "n", "json_class": "Chef::Role"}, "Field 'json_class' invalid"),
        ({"name": "n", "chef_type": "role"}, "Field 'chef_type' invalid"),
    ],
)
def test_create_node_bad_bodies(w, body, message):
    r = _node(w, ALICE, body)
    assert (r.status, r.body) == (400, {"error": [message]})


def test_put_node(w):
    assert _node(w, NODE1, {"name": "node1"}).status == 201
    r = w.call(idn.put_node, NODE1, "acme", "node1", {"normal": {"tags": ["a"]}})
    assert r.status == 200 and r.body["normal"] == {"tags": ["a"]} and r.body["name"] == "node1"
    assert w.state.orgs["acme"].nodes["node1"] == r.body
    r = w.call(idn.put_node, ALICE, "acme", "node1", {"name": "node1", "run_list": ["x"]})
    assert r.body["run_list"] == ["recipe[x]"] and r.body["normal"] == {}
    r = w.call(idn.put_node, ALICE, "acme", "node1", {"name": "node2"})
    assert (r.status, r.body) == (400, {"error": ["Node name mismatch."]})
    assert w.call(idn.put_node, ALICE, "acme", "node1", {"run_list": 1}).status == 400
    assert w.call(idn.put_node, ALICE, "acme", "node1", None).status == 400
    r = w.call(idn.put_node, NODE2, "acme", "node2", {})
    assert (r.status, r.body) == (404, {"error": ["node 'node2' not found"]})
    for who in (NODE2, BOB, VALIDATOR):
        _forbidden(w.call(idn.put_node, who, "acme", "node1", {}), "update")
    _not_associated(w.call(idn.put_node, STRANGER, "acme", "node1", {}), "node1")
    assert w.call(idn.put_node, PIVOTAL, "nope", "node1", {}).status == 404


def test_get_list_delete_nodes(w):
    _node(w, ALICE, {"name": "b"})
    _node(w, ALICE, {"name": "a"})
    r = w.call(idn.list_nodes, NODE1, "acme", base_url=BASE)
    assert r.body == {
        "a": f"{BASE}/organizations/acme/nodes/a",
        "b": f"{BASE}/organizations/acme/nodes/b",
    }
    _forbidden(w.call(idn.list_nodes, VALIDATOR, "acme", base_url=BASE), "read")
    _forbidden(w.call(idn.get_node, VALIDATOR, "acme", "a"), "read")
    _not_associated(w.call(idn.get_node, CAROL, "acme", "a"), "carol")
    assert w.call(idn.get_node, BOB, "acme", "zzz").status == 404
    assert w.call(idn.list_nodes, BOB, "nope", base_url=BASE).status == 404
    _node(w, NODE1, {"name": "node1"})
    for who in (BOB, NODE1):
        _forbidden(w.call(idn.delete_node, who, "acme", "node1"), "delete")
    r = w.call(idn.delete_node, ALICE, "acme", "a")
    assert r.status == 200 and r.body["name"] == "a"
    assert "a" not in w.state.orgs["acme"].nodes
    r = w.call(idn.delete_node, ALICE, "acme", "a")
    assert (r.status, r.body) == (404, {"error": ["node 'a' not found"]})


# --------------------------------------------------------------------------- §6.1 authorization


def test_membership_and_admin(w):
    s = w.state
    assert all(idn.is_org_member(s, "acme", p) for p in (PIVOTAL, ALICE, BOB, NODE1, VALIDATOR))
    assert not any(idn.is_org_member(s, "acme", p) for p in (CAROL, STRANGER))
    assert not idn.is_org_member(s, "nope", BOB)
    assert idn.is_org_admin(s, "acme", ALICE) and idn.is_org_admin(s, "nope", PIVOTAL)
    assert not any(idn.is_org_admin(s, "acme", p) for p in (BOB, NODE1, CAROL))


def test_read_jobs_without_readers_group(w):
    s = w.state
    for p in (PIVOTAL, ALICE, BOB, NODE1, VALIDATOR):
        assert idn.can_read_jobs(s, "acme", p)
    for p in (CAROL, STRANGER):
        assert not idn.can_read_jobs(s, "acme", p)
    assert not idn.can_read_jobs(s, "nope", BOB)


def test_read_jobs_with_readers_group_nested(w):
    _group(w, ALICE, "pushy_job_readers")
    _group(w, ALICE, "sub")
    w.call(idn.put_group, ALICE, "acme", "sub", {"clients": ["node2"]})
    w.call(idn.put_group, ALICE, "acme", "pushy_job_readers", {"users": ["bob"], "groups": ["sub"]})
    s = w.state
    for p in (PIVOTAL, BOB, NODE2):
        assert idn.can_read_jobs(s, "acme", p)
    for p in (ALICE, NODE1, CAROL, STRANGER, VALIDATOR):  # admins are not readers
        assert not idn.can_read_jobs(s, "acme", p)


def test_write_jobs_falls_back_to_admins(w):
    s = w.state
    assert idn.can_write_jobs(s, "acme", ALICE) and idn.can_write_jobs(s, "acme", PIVOTAL)
    for p in (BOB, NODE1, CAROL, VALIDATOR):
        assert not idn.can_write_jobs(s, "acme", p)


def test_write_jobs_with_writers_group_nested(w):
    _group(w, ALICE, "pushy_job_writers")
    _group(w, ALICE, "deployers")
    w.call(idn.put_group, ALICE, "acme", "deployers", {"clients": ["node1"]})
    w.call(
        idn.put_group,
        ALICE,
        "acme",
        "pushy_job_writers",
        {"users": ["bob"], "groups": ["deployers"]},
    )
    s = w.state
    for p in (PIVOTAL, BOB, NODE1):
        assert idn.can_write_jobs(s, "acme", p)
    for p in (ALICE, NODE2, CAROL, STRANGER):
        assert not idn.can_write_jobs(s, "acme", p)


def test_write_jobs_with_neither_group(w):
    w.commit([{"type": "group_deleted", "org": "acme", "name": "admins"}])
    assert not idn.can_write_jobs(w.state, "acme", ALICE)
    assert not idn.can_write_jobs(w.state, "acme", BOB)
    assert idn.can_write_jobs(w.state, "acme", PIVOTAL)


def test_fetch_config(w):
    s = w.state
    assert idn.can_fetch_config(s, "acme", "node1", NODE1)
    assert idn.can_fetch_config(s, "acme", "node1", PIVOTAL)
    for p in (NODE2, ALICE, BOB, CAROL, STRANGER, VALIDATOR):
        assert not idn.can_fetch_config(s, "acme", "node1", p)
    assert not idn.can_fetch_config(s, "acme", "node1", Principal("node1", "user"))
    lax = {"validate_client_node_name": False}
    assert idn.can_fetch_config(s, "acme", "node1", NODE2, **lax)
    assert not idn.can_fetch_config(s, "acme", "node1", BOB, **lax)
    assert not idn.can_fetch_config(s, "acme", "node1", STRANGER, **lax)


# --------------------------------------------------------------------------- replay property


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["create", "put", "delete"]),
        st.sampled_from(["g0", "g1", "g2", "g3"]),
        st.lists(st.sampled_from(["g0", "g1", "g2", "g3", "admins"]), max_size=3),
        st.lists(st.sampled_from(["alice", "bob", "carol"]), max_size=2),
    ),
    max_size=25,
)


def _reaches(state: idn.IdentityState, start: str) -> bool:
    groups = state.orgs["acme"].groups
    pending, seen = list(groups[start].groups), set()
    while pending:
        g = pending.pop()
        if g == start:
            return True
        if g not in seen and g in groups:
            seen.add(g)
            pending.extend(groups[g].groups)
    return False


@settings(max_examples=60, deadline=None)
@given(ops=_OPS)
def test_random_group_edits_never_cycle_and_replay(ops):
    w = World()
    w.commit(idn.bootstrap_superuser(w.state, PAIR1[1]))
    _org(w, PIVOTAL, {"name": "acme", "full_name": "Acme"})
    for name in ("alice", "bob"):
        w.call(idn.create_user, PIVOTAL, {"username": name}, new_key=None, base_url=BASE)
        w.call(idn.associate_user, PIVOTAL, "acme", {"username": name}, base_url=BASE)
    for op, name, subgroups, users in ops:
        if op == "create":
            r = _group(w, PIVOTAL, name)
            assert r.status in (201, 409)
        elif op == "put":
            r = w.call(idn.put_group, PIVOTAL, "acme", name, {"groups": subgroups, "users": users})
            assert r.status in (200, 400, 404)
        else:
            assert w.call(idn.delete_group, PIVOTAL, "acme", name).status in (200, 404)
        for g in w.state.orgs["acme"].groups:
            assert not _reaches(w.state, g)
    assert idn.replay(w.log) == w.state
