"""The appliance's own Chef-style identity authority, as pure state and request handlers.

There is no Chef server behind the appliance, so it answers the subset of the Chef Server
API (version 1) that knife, chef-client and the push client need: organizations, users,
clients with several RSA public keys each, groups (nested, cycle-safe) and node records.

Handlers never touch the state. Each returns ``Result(status, body, records)``; the shell
appends ``records`` to the durable log and then folds them in with `apply`, so the log is
the only source of truth and a restart replays it to the same state. Keys, GUIDs and the
time come in as parameters (key generation is slow and random; it belongs to the shell,
which asks `needs_new_key` first).

Who may do what (the superuser, ``pivotal``, may do everything):

=============================================  ===============================================
route                                          allowed
=============================================  ===============================================
GET/POST /organizations, POST /users,          superuser only
GET /users, POST /organizations/ORG/users
GET /users/NAME, GET/POST/DELETE               the user itself
/users/NAME/keys[/KEY]
GET /organizations/ORG, GET .../users,         org readers: associated users and the org's
GET .../clients[/NAME], .../groups[/NAME],     non-validator clients
GET .../nodes[/NAME], GET client keys
POST .../clients                               org admins; the org's validator (for
                                               non-validator clients: chef-client bootstrap)
DELETE .../clients/NAME, groups POST/PUT/      org admins (members of ``admins``)
DELETE, DELETE .../nodes/NAME
GET .../clients/NAME[/keys[/KEY]],             org admins; the client itself (key rotation)
POST/DELETE .../clients/NAME/keys[/KEY]
POST .../nodes, PUT .../nodes/NAME             org admins; a client for the node of its own name
=============================================  ===============================================

Checks run in the order: organization exists (404), requester is an org member (403
"not associated"), permission (403 "missing ... permission"), body (400), object exists
(404) or already exists (409). Built-in groups (``admins``, ``users``, ``clients``) cannot
be deleted (400). Group POST ignores member lists (Chef does too); members are set by PUT.

The package is split by concern (`model`, `records`, `acl`, the shared `checks`, and one
module of handlers per kind of object); this module is its interface, and callers use
``identity.NAME`` only.
"""

from __future__ import annotations

from appliance.core.identity.acl import (
    can_fetch_config,
    can_read_jobs,
    can_write_jobs,
    in_group,
    is_org_admin,
    is_org_member,
    lookup_keys,
)
from appliance.core.identity.actor_keys import (
    add_key,
    delete_key,
    get_key,
    list_keys,
    needs_new_key,
)
from appliance.core.identity.clients import (
    create_client,
    delete_client,
    get_client,
    list_clients,
)
from appliance.core.identity.groups import (
    create_group,
    delete_group,
    get_group,
    list_groups,
    put_group,
)
from appliance.core.identity.model import (
    BUILTIN_GROUPS,
    Actor,
    Group,
    IdentityState,
    Key,
    Org,
    Principal,
    Result,
)
from appliance.core.identity.node_records import (
    create_node,
    delete_node,
    get_node,
    list_nodes,
    put_node,
)
from appliance.core.identity.orgs import (
    associate_user,
    create_org,
    get_org,
    list_org_users,
    list_orgs,
)
from appliance.core.identity.records import (
    RECORD_TYPES,
    apply,
    bootstrap_superuser,
    export_records,
    replay,
)
from appliance.core.identity.users import (
    create_user,
    get_user,
    list_users,
)

__all__ = [
    "Actor",
    "BUILTIN_GROUPS",
    "Group",
    "IdentityState",
    "Key",
    "Org",
    "Principal",
    "RECORD_TYPES",
    "Result",
    "add_key",
    "apply",
    "associate_user",
    "bootstrap_superuser",
    "can_fetch_config",
    "can_read_jobs",
    "can_write_jobs",
    "create_client",
    "create_group",
    "create_node",
    "create_org",
    "create_user",
    "delete_client",
    "delete_group",
    "delete_key",
    "delete_node",
    "export_records",
    "get_client",
    "get_group",
    "get_key",
    "get_node",
    "get_org",
    "get_user",
    "in_group",
    "is_org_admin",
    "is_org_member",
    "list_clients",
    "list_groups",
    "list_keys",
    "list_nodes",
    "list_org_users",
    "list_orgs",
    "list_users",
    "lookup_keys",
    "needs_new_key",
    "put_group",
    "put_node",
    "replay",
]
