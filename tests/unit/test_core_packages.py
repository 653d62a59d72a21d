"""The split core packages (identity, search): their interfaces still offer every name callers
use, and no module in them reaches outside the pure core."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

from appliance.core import identity, search
from appliance.core.identity import checks, schemas

# the names callers used before the split (server routes, state, bench, tests)
IDENTITY_NAMES = {
    "BUILTIN_GROUPS", "RECORD_TYPES", "Actor", "Group", "IdentityState", "Key", "Org",
    "Principal", "Result", "add_key", "apply", "associate_user", "bootstrap_superuser",
    "can_fetch_config", "can_read_jobs", "can_write_jobs", "create_client", "create_group",
    "create_node", "create_org", "create_user", "delete_client", "delete_group", "delete_key",
    "delete_node", "export_records", "get_client", "get_group", "get_key", "get_node", "get_org",
    "get_user", "in_group", "is_org_admin", "is_org_member", "list_clients", "list_groups",
    "list_keys", "list_nodes", "list_org_users", "list_orgs", "list_users", "lookup_keys",
    "needs_new_key", "put_group", "put_node", "replay",
}  # fmt: skip
SEARCH_NAMES = {
    "DEFAULT_ROWS", "IndexCache", "Query", "QueryError", "flatten_node", "index_document",
    "parse_filter_result", "parse_query", "parse_sort", "partial", "search",
}  # fmt: skip


@pytest.mark.parametrize(("package", "names"), [(identity, IDENTITY_NAMES), (search, SEARCH_NAMES)])
def test_interface_offers_every_name(package, names: set[str]) -> None:
    assert names <= set(package.__all__)
    for name in package.__all__:
        assert hasattr(package, name), name


@pytest.mark.parametrize("package", [identity, search])
def test_modules_import_only_the_core(package) -> None:
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        tree = ast.parse(Path(module.__file__).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("appliance"):
                assert node.module.startswith("appliance.core"), (info.name, node.module)
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("appliance") for a in node.names)


def test_error_replies_carry_chef_texts() -> None:
    assert checks.missing_perm("read") == (403, {"error": ["missing read permission"]}, [])
    assert checks.bad_field("groups", "cycle").body == {"error": ["Field 'groups' invalid: cycle"]}
    assert checks.not_found("client", "n1").body == {"error": ["client 'n1' not found"]}
    assert checks.exists("key", "k").status == 409
    assert checks.body_problem(schemas.ASSOCIATION, {"username": "a b"}).status == 400
    assert checks.body_problem(schemas.ASSOCIATION, {"username": "node-1.x"}) is None
    assert checks.body_problem(schemas.USER_REQUEST, {"username": "u"}, only=("email",)) is None
    assert checks.body_problem(schemas.ORG_REQUEST, {"name": "o"}).body == {
        "error": ["Field 'full_name' missing"]
    }
