"""The standalone Chef-style identity API over real HTTP (DESIGN.md "Identity").

Organizations (validator client, built-in groups), users and association, clients and their
several keys (rotation without downtime), groups with nesting and cycle refusal, node records
(a client may update its own), and the statuses and error bodies around them.
"""

from __future__ import annotations

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from appliance.core.keys import load_private_pem, load_public_pem, public_pem
from tests.support import Chef, error_of, new_user, server_fixture, setup_org

ORG = "idorg"
PUSHY_JOBS = f"/organizations/{ORG}/pushy/jobs"


def same_public_key(pem_a: str, pem_b: str) -> bool:
    return load_public_pem(pem_a).public_numbers() == load_public_pem(pem_b).public_numbers()


srv = server_fixture("identity")


@pytest.fixture(scope="module")
def world(srv):
    """Org ``idorg`` with client node1, admin user ada (in ``admins``), member user max."""
    admin, keys = setup_org(srv, ORG, ("node1", "node2"))
    ada = new_user(admin, "ada", ORG)
    mx = new_user(admin, "max", ORG)
    r = admin.put(f"/organizations/{ORG}/groups/admins", {"users": ["ada"]})
    assert r.status_code == 200, r.text
    return {
        "admin": admin,
        "ada": ada,
        "max": mx,
        "node1": Chef(srv.url, "node1", keys["node1"]),
        "node2": Chef(srv.url, "node2", keys["node2"]),
        "keys": keys,
    }


# --------------------------------------------------------------------------- organizations


def test_create_org_returns_validator_key_and_builtin_groups(srv):
    admin = Chef(srv.url, "pivotal", srv.pivotal_key.read_bytes())
    r = admin.post("/organizations", {"name": "fresh", "full_name": "Fresh Org"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"uri", "clientname", "private_key"}
    assert body["uri"] == f"{srv.url}/organizations/fresh"
    assert body["clientname"] == "fresh-validator"
    load_private_pem(body["private_key"])

    r = admin.get("/organizations/fresh")
    assert r.status_code == 200
    org = r.json()
    assert org["name"] == "fresh" and org["full_name"] == "Fresh Org"
    assert len(org["guid"]) == 32 and int(org["guid"], 16) >= 0
    groups = admin.get("/organizations/fresh/groups").json()
    assert set(groups) == {"admins", "users", "clients"}
    assert groups["admins"] == f"{srv.url}/organizations/fresh/groups/admins"

    # the validator client exists and may register new clients (chef-client bootstrap) ...
    validator = Chef(srv.url, "fresh-validator", body["private_key"])
    r = validator.post("/organizations/fresh/clients", {"name": "boot1", "create_key": True})
    assert r.status_code == 201, r.text
    assert admin.get("/organizations/fresh/clients/fresh-validator").json()["validator"] is True
    # ... which land in the built-in clients group
    assert admin.get("/organizations/fresh/groups/clients").json()["clients"] == ["boot1"]
    # ... but may not read the org's objects
    assert validator.get("/organizations/fresh/nodes").status_code == 403

    r = admin.post("/organizations", {"name": "fresh", "full_name": "again"})
    assert r.status_code == 409
    assert isinstance(error_of(r), list)


@pytest.mark.parametrize(
    "body",
    [{"name": "Bad Name", "full_name": "x"}, {"name": "ok1"}, {"full_name": "x"}, [], "x"],
)
def test_create_org_rejects_bad_bodies(srv, body):
    admin = Chef(srv.url, "pivotal", srv.pivotal_key.read_bytes())
    r = admin.post("/organizations", body)
    assert r.status_code == 400, r.text
    assert isinstance(error_of(r), list)


def test_create_org_is_superuser_only(srv, world):
    r = world["ada"].post("/organizations", {"name": "adaorg", "full_name": "x"})
    assert r.status_code == 403
    assert world["admin"].get("/organizations/adaorg").status_code == 404


def test_get_org_members_and_outsiders(srv, world):
    assert world["max"].get(f"/organizations/{ORG}").json()["name"] == ORG
    assert world["node1"].get(f"/organizations/{ORG}").status_code == 200
    outsider = new_user(world["admin"], "outsider1")
    r = outsider.get(f"/organizations/{ORG}")
    assert r.status_code == 403
    assert r.json() == {"error": [f"'outsider1' is not associated with organization '{ORG}'"]}
    r = world["admin"].get("/organizations/nosuch")
    assert r.status_code == 404
    assert r.json() == {"error": ["organization 'nosuch' does not exist."]}


# --------------------------------------------------------------------------- users


def test_create_user_with_generated_key(srv, world):
    admin = world["admin"]
    r = admin.post("/users", {"username": "gen", "create_key": True, "email": "g@example.com"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"uri", "chef_key"}
    assert body["uri"] == f"{srv.url}/users/gen"
    key = body["chef_key"]
    assert set(key) == {"name", "public_key", "private_key", "expiration_date"}
    assert key["name"] == "default" and key["expiration_date"] == "infinity"
    assert same_public_key(key["public_key"], public_pem(load_private_pem(key["private_key"])))

    gen = Chef(srv.url, "gen", key["private_key"])
    r = gen.get("/users/gen")  # a user may read itself
    assert r.status_code == 200, r.text
    assert r.json()["username"] == "gen" and r.json()["email"] == "g@example.com"
    assert admin.get("/users/gen").status_code == 200
    assert gen.get("/users/ada").status_code == 403
    assert admin.get("/users/nobody").status_code == 404
    assert "gen" in admin.get("/users").json()
    assert gen.get("/users").status_code == 403

    assert admin.post("/users", {"username": "gen", "create_key": True}).status_code == 409


def test_create_user_with_own_public_key(srv, world):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = public_pem(private)
    r = world["admin"].post("/users", {"username": "byo", "public_key": pem})
    assert r.status_code == 201, r.text
    key = r.json()["chef_key"]
    assert set(key) == {"name", "public_key", "expiration_date"}
    assert key["name"] == "default" and key["expiration_date"] == "infinity"
    byo = Chef(
        srv.url,
        "byo",
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    assert byo.get("/users/byo").status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"username": "bad name", "create_key": True},
        {"create_key": True},
        {"username": "k1", "public_key": "not a pem"},
        {"username": "k2", "create_key": "yes"},
        {"username": "k3", "create_key": True, "public_key": "x"},
        [],
    ],
)
def test_create_user_rejects_bad_bodies(srv, world, body):
    r = world["admin"].post("/users", body)
    assert r.status_code == 400, r.text
    assert isinstance(error_of(r), list)


def test_non_rsa_public_key_is_refused(srv, world):
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    r = world["admin"].post("/users", {"username": "ecuser", "public_key": pem})
    assert r.status_code == 400, r.text
    r = world["admin"].post(
        f"/organizations/{ORG}/clients/node2/keys", {"name": "ec", "public_key": pem}
    )
    assert r.status_code == 400, r.text


def test_create_user_is_superuser_only(srv, world):
    r = world["ada"].post("/users", {"username": "sneaky", "create_key": True})
    assert r.status_code == 403
    assert world["admin"].get("/users/sneaky").status_code == 404


def test_associate_user_with_org(srv, world):
    admin = world["admin"]
    joiner = new_user(admin, "joiner")
    assert joiner.get(f"/organizations/{ORG}").status_code == 403
    # only the superuser may associate, even an org admin may not
    r = world["ada"].post(f"/organizations/{ORG}/users", {"username": "joiner"})
    assert r.status_code == 403
    r = admin.post(f"/organizations/{ORG}/users", {"username": "joiner"})
    assert r.status_code == 201, r.text
    assert r.json() == {"uri": f"{srv.url}/organizations/{ORG}/users/joiner"}
    assert joiner.get(f"/organizations/{ORG}").status_code == 200
    assert joiner.get(PUSHY_JOBS).status_code == 200
    users = admin.get(f"/organizations/{ORG}/users").json()
    assert {"user": {"username": "joiner"}} in users
    assert "joiner" in admin.get(f"/organizations/{ORG}/groups/users").json()["users"]
    assert admin.post(f"/organizations/{ORG}/users", {"username": "joiner"}).status_code == 409
    assert admin.post(f"/organizations/{ORG}/users", {"username": "ghost"}).status_code == 404
    r = admin.post("/organizations/nosuch/users", {"username": "joiner"})
    assert r.status_code == 404


# --------------------------------------------------------------------------- clients


def test_client_create_get_delete(srv, world):
    admin, ada = world["admin"], world["ada"]
    base = f"/organizations/{ORG}/clients"
    r = ada.post(base, {"name": "temp", "create_key": True})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["uri"] == f"{srv.url}{base}/temp"
    assert body["chef_key"]["name"] == "default"
    assert body["chef_key"]["expiration_date"] == "infinity"
    temp = Chef(srv.url, "temp", body["chef_key"]["private_key"])
    assert temp.get(PUSHY_JOBS).status_code == 200

    got = admin.get(f"{base}/temp")
    assert got.status_code == 200
    assert got.json()["name"] == "temp" and got.json()["validator"] is False
    assert "temp" in admin.get(base).json()
    assert ada.post(base, {"name": "temp", "create_key": True}).status_code == 409

    assert world["max"].delete(f"{base}/temp").status_code == 403  # not an admin
    r = ada.delete(f"{base}/temp")
    assert r.status_code == 200
    assert r.json() == got.json()  # the deleted object
    assert admin.get(f"{base}/temp").status_code == 404
    assert ada.delete(f"{base}/temp").status_code == 404
    assert "temp" not in admin.get(base).json()
    r = temp.get(PUSHY_JOBS)  # its key no longer signs
    assert r.status_code == 401
    assert error_of(r) == [
        "Failed to authenticate as 'temp'. Ensure that your node_name and client key are correct."
    ]


def test_non_admin_cannot_create_clients(srv, world):
    r = world["max"].post(f"/organizations/{ORG}/clients", {"name": "nope", "create_key": True})
    assert r.status_code == 403
    r = world["node1"].post(f"/organizations/{ORG}/clients", {"name": "nope", "create_key": True})
    assert r.status_code == 403


def test_client_keys_rotation_without_downtime(srv, world):
    """A client adds a key itself, signs with either, then retires the old one."""
    admin = world["admin"]
    r = admin.post(f"/organizations/{ORG}/clients", {"name": "rotor", "create_key": True})
    assert r.status_code == 201
    old = Chef(srv.url, "rotor", r.json()["chef_key"]["private_key"])
    keys = f"/organizations/{ORG}/clients/rotor/keys"

    r = old.get(keys)
    assert r.status_code == 200
    assert r.json() == [{"name": "default", "uri": f"{srv.url}{keys}/default", "expired": False}]

    r = old.post(keys, {"name": "next", "create_key": True})
    assert r.status_code == 201, r.text
    assert r.json()["uri"] == f"{srv.url}{keys}/next"
    new = Chef(srv.url, "rotor", r.json()["private_key"])

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    r = admin.post(keys, {"name": "byo", "public_key": public_pem(private)})
    assert r.status_code == 201, r.text
    assert "private_key" not in r.json()
    assert admin.post(keys, {"name": "byo", "create_key": True}).status_code == 409

    got = admin.get(f"{keys}/next").json()
    assert set(got) == {"name", "public_key", "expiration_date"}
    assert got["expiration_date"] == "infinity"
    assert same_public_key(got["public_key"], public_pem(new.key))
    assert [k["name"] for k in admin.get(keys).json()] == ["byo", "default", "next"]

    for chef in (old, new):  # any key may sign
        assert chef.get(PUSHY_JOBS).status_code == 200
        assert chef.get(f"/organizations/{ORG}/clients/rotor").status_code == 200

    r = new.delete(f"{keys}/default")
    assert r.status_code == 200
    assert r.json()["name"] == "default"
    assert old.get(PUSHY_JOBS).status_code == 401
    assert new.get(PUSHY_JOBS).status_code == 200
    assert admin.get(f"{keys}/default").status_code == 404
    assert admin.delete(f"{keys}/default").status_code == 404

    # another (non-admin) client may not touch rotor's keys
    r = world["node1"].post(keys, {"name": "evil", "create_key": True})
    assert r.status_code == 403
    assert world["node1"].delete(f"{keys}/next").status_code == 403


def test_user_keys(srv, world):
    admin = world["admin"]
    me = new_user(admin, "keyed")
    r = me.post("/users/keyed/keys", {"name": "laptop", "create_key": True})
    assert r.status_code == 201, r.text
    laptop = Chef(srv.url, "keyed", r.json()["private_key"])
    assert laptop.get("/users/keyed").status_code == 200
    assert [k["name"] for k in me.get("/users/keyed/keys").json()] == ["default", "laptop"]
    assert world["ada"].get("/users/keyed/keys").status_code == 403
    assert me.delete("/users/keyed/keys/default").status_code == 200
    assert me.get("/users/keyed").status_code == 401
    assert laptop.get("/users/keyed/keys/laptop").status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"create_key": True},
        {"name": "x1"},
        {"name": "x2", "create_key": True, "expiration_date": "tomorrow"},
        {"name": "x3", "create_key": True, "expiration_date": "2030-02-30T00:00:00Z"},
        {"name": "x4", "public_key": 17},
    ],
)
def test_add_key_rejects_bad_bodies(srv, world, body):
    r = world["admin"].post(f"/organizations/{ORG}/clients/node2/keys", body)
    assert r.status_code == 400, r.text


# --------------------------------------------------------------------------- groups


def test_groups_nesting_and_cycles(srv, world):
    admin, ada = world["admin"], world["ada"]
    groups = f"/organizations/{ORG}/groups"
    for name in ("outer", "inner"):
        r = ada.post(groups, {"groupname": name})
        assert r.status_code == 201, r.text
        assert r.json() == {"uri": f"{srv.url}{groups}/{name}"}
    assert ada.post(groups, {"groupname": "outer"}).status_code == 409

    r = ada.put(f"{groups}/inner", {"users": ["max"], "clients": ["node1"]})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "actors": ["max", "node1"],
        "users": ["max"],
        "clients": ["node1"],
        "groups": [],
        "orgname": ORG,
        "name": "inner",
        "groupname": "inner",
    }
    r = ada.put(f"{groups}/outer", {"actors": {"users": ["ada"], "groups": ["inner"]}})
    assert r.status_code == 200, r.text
    assert r.json()["groups"] == ["inner"] and r.json()["users"] == ["ada"]
    assert admin.get(f"{groups}/outer").json() == r.json()

    # a cycle, direct or through the nesting, is refused and changes nothing
    for name, body in (
        ("inner", {"groups": ["outer"]}),
        ("outer", {"groups": ["outer"]}),
    ):
        r = ada.put(f"{groups}/{name}", body)
        assert r.status_code == 400, (name, r.text)
        assert isinstance(error_of(r), list)
    assert admin.get(f"{groups}/inner").json()["groups"] == []

    # nested membership counts for pushy's groups
    r = ada.post(groups, {"groupname": "pushy_job_writers"})
    assert r.status_code == 201
    assert ada.put(f"{groups}/pushy_job_writers", {"groups": ["outer"]}).status_code == 200
    job = {"command": "x", "nodes": ["n"]}
    assert world["max"].post(PUSHY_JOBS, job).status_code == 201  # via outer → inner
    assert world["node1"].post(PUSHY_JOBS, job).status_code == 201
    assert world["node2"].post(PUSHY_JOBS, job).status_code == 403
    assert ada.delete(f"{groups}/pushy_job_writers").status_code == 200
    assert world["max"].post(PUSHY_JOBS, job).status_code == 403


def test_group_errors(srv, world):
    ada = world["ada"]
    groups = f"/organizations/{ORG}/groups"
    assert world["max"].post(groups, {"groupname": "mine"}).status_code == 403
    assert world["max"].put(f"{groups}/admins", {"users": ["max"]}).status_code == 403
    assert ada.put(f"{groups}/nosuch", {"users": []}).status_code == 404
    assert ada.get(f"{groups}/nosuch").status_code == 404
    for body in ({"users": ["stranger"]}, {"clients": ["ghost"]}, {"groups": ["nope"]}):
        r = ada.put(f"{groups}/users", body)
        assert r.status_code == 400, (body, r.text)
    for builtin in ("admins", "users", "clients"):
        assert ada.delete(f"{groups}/{builtin}").status_code == 400
    assert ada.post(groups, {"groupname": "Bad Name"}).status_code == 400
    r = ada.post(groups, {"groupname": "gone"})
    assert r.status_code == 201
    r = ada.delete(f"{groups}/gone")
    assert r.status_code == 200 and r.json()["name"] == "gone"
    assert ada.get(f"{groups}/gone").status_code == 404


# --------------------------------------------------------------------------- nodes


def test_nodes_crud_and_a_client_updating_its_own_node(srv, world):
    admin, ada = world["admin"], world["ada"]
    nodes = f"/organizations/{ORG}/nodes"
    r = ada.post(nodes, {"name": "node1", "run_list": ["base", "role[web]"]})
    assert r.status_code == 201, r.text
    assert r.json() == {"uri": f"{srv.url}{nodes}/node1"}
    assert ada.post(nodes, {"name": "node1"}).status_code == 409

    node = admin.get(f"{nodes}/node1").json()
    assert node["name"] == "node1"
    assert node["chef_environment"] == "_default"
    assert node["json_class"] == "Chef::Node" and node["chef_type"] == "node"
    assert node["run_list"] == ["recipe[base]", "role[web]"]
    assert world["max"].get(f"{nodes}/node1").status_code == 200
    assert "node1" in world["max"].get(nodes).json()

    # the node's own client may update its record (chef-client does each run) ...
    node["automatic"] = {"platform": "debian", "ipaddress": "10.0.0.1"}
    r = world["node1"].put(f"{nodes}/node1", node)
    assert r.status_code == 200, r.text
    assert r.json()["automatic"]["platform"] == "debian"
    assert admin.get(f"{nodes}/node1").json()["automatic"]["ipaddress"] == "10.0.0.1"
    # ... and create its own record, but not anybody else's
    assert world["node2"].put(f"{nodes}/node1", node).status_code == 403
    assert world["node2"].post(nodes, {"name": "node1x"}).status_code == 403
    assert world["node2"].post(nodes, {"name": "node2"}).status_code == 201
    assert world["max"].put(f"{nodes}/node1", node).status_code == 403

    assert ada.put(f"{nodes}/node1", {**node, "name": "other"}).status_code == 400
    assert ada.put(f"{nodes}/missing", {"name": "missing"}).status_code == 404
    assert ada.post(nodes, {"name": "badrl", "run_list": "base"}).status_code == 400

    assert world["node1"].delete(f"{nodes}/node1").status_code == 403
    r = ada.delete(f"{nodes}/node1")
    assert r.status_code == 200
    assert r.json()["automatic"]["platform"] == "debian"
    assert admin.get(f"{nodes}/node1").status_code == 404
    assert ada.delete(f"{nodes}/node1").status_code == 404


# --------------------------------------------------------------------------- common statuses


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/organizations/nosuch"),
        ("GET", "/organizations/nosuch/users"),
        ("GET", "/organizations/nosuch/clients"),
        ("GET", "/organizations/nosuch/clients/c"),
        ("GET", "/organizations/nosuch/clients/c/keys"),
        ("GET", "/organizations/nosuch/groups"),
        ("GET", "/organizations/nosuch/groups/admins"),
        ("GET", "/organizations/nosuch/nodes"),
        ("GET", "/organizations/nosuch/nodes/n"),
        ("DELETE", "/organizations/nosuch/nodes/n"),
        ("POST", "/organizations/nosuch/clients"),
    ],
)
def test_unknown_org_is_404_on_identity_routes(srv, world, method, path):
    body = {"name": "c", "create_key": True} if method == "POST" else None
    r = world["admin"].request(method, path, body)
    assert r.status_code == 404, r.text
    assert r.json() == {"error": ["organization 'nosuch' does not exist."]}


def test_identity_routes_require_signatures(srv, world):
    for method, path in (
        ("GET", f"/organizations/{ORG}"),
        ("POST", "/organizations"),
        ("POST", "/users"),
        ("GET", f"/organizations/{ORG}/clients"),
    ):
        r = httpx.request(method, srv.url + path, timeout=10)
        assert r.status_code == 400, (method, path)
        assert error_of(r)[0].startswith("missing required authentication header(s)")


def test_invalid_json_body_is_400(srv, world):
    r = world["admin"].post(f"/organizations/{ORG}/groups", raw=b"{not json")
    assert r.status_code == 400
    assert isinstance(error_of(r), list)
    r = world["admin"].post("/organizations", raw=b"[1, 2")
    assert r.status_code == 400, r.text
