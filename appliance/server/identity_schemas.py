"""The component schemas of the identity API and node search (Chef's shapes), and search's
query parameters.

Request schemas are open where Chef lets the client add keys; names follow the patterns
``core.identity`` enforces.
"""

from __future__ import annotations

from typing import Any

from appliance.server.apidoc import query, ref
from appliance.server.schemas import NAME_LIST, STRING, URI, obj

Schema = dict[str, Any]

ACTOR_NAME = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,255}$"}  # users, clients, nodes
GROUP_NAME = {"type": "string", "pattern": "^[a-z0-9_-]{1,255}$"}
RUN_LIST_ITEM = {
    "type": "string",
    # x1c-x1f and x85 are whitespace to the server (Python's \s) but not to ECMA's
    "pattern": "^((recipe|role)\\[[^\\[\\]\\s\\x1c-\\x1f\\x85]+\\]|[A-Za-z0-9_.:@-]+)$",
    "description": "recipe[NAME], role[NAME], or a bare recipe name.",
}

IDENTITY_SCHEMAS: dict[str, Schema] = {
    "NameMap": {
        "type": "object",
        "description": "name -> URL of the object.",
        "additionalProperties": URI,
    },
    "Created": obj({"uri": URI}, ["uri"]),
    "OrgRequest": obj(
        {
            "name": {"type": "string", "pattern": "^[a-z0-9_-]{1,255}$"},
            "full_name": {"type": "string", "minLength": 1, "maxLength": 1023},
        },
        ["name", "full_name"],
        closed=False,
    ),
    "OrgCreated": obj(
        {
            "uri": URI,
            "clientname": {"type": "string", "description": "ORG-validator"},
            "private_key": {"type": "string", "description": "The validator's private key."},
        },
        ["uri", "clientname", "private_key"],
    ),
    "Org": obj(
        {
            "name": STRING,
            "full_name": STRING,
            "guid": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        },
        ["name", "full_name", "guid"],
    ),
    "ChefKey": obj(
        {
            "name": STRING,
            "public_key": STRING,
            "expiration_date": STRING,
            "private_key": {"type": "string", "description": "Only when create_key was true."},
        },
        ["name", "public_key", "expiration_date"],
    ),
    "CreatedWithKey": obj({"uri": URI, "chef_key": ref("ChefKey")}, ["uri"]),
    "UserRequest": obj(
        {
            "username": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,255}$"},
            "display_name": STRING,
            "email": STRING,
            "first_name": STRING,
            "last_name": STRING,
            "create_key": {"type": "boolean"},
            "public_key": {"type": "string", "description": "PEM; not with create_key."},
        },
        ["username"],
        closed=False,
    ),
    "User": obj(
        {
            "username": STRING,
            "display_name": STRING,
            "email": STRING,
            "first_name": STRING,
            "last_name": STRING,
        },
        ["username", "display_name", "email", "first_name", "last_name"],
    ),
    "Association": obj(
        {"username": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,255}$"}},
        ["username"],
        closed=False,
    ),
    "OrgUsers": {
        "type": "array",
        "items": obj({"user": obj({"username": STRING}, ["username"])}, ["user"]),
    },
    "ClientRequest": {
        **obj(
            {
                "name": ACTOR_NAME,
                "clientname": {"description": "Used (and must be a name) when name is absent."},
                "validator": {"type": "boolean"},
                "create_key": {"type": "boolean"},
                "public_key": {"type": "string", "description": "PEM; not with create_key."},
            },
            closed=False,
        ),
        "anyOf": [
            {"required": ["name"]},
            {"required": ["clientname"], "properties": {"clientname": ACTOR_NAME}},
        ],
    },
    "Client": obj(
        {
            "name": STRING,
            "clientname": STRING,
            "orgname": STRING,
            "validator": {"type": "boolean"},
            "json_class": {"type": "string", "const": "Chef::ApiClient"},
            "chef_type": {"type": "string", "const": "client"},
        },
        ["name", "clientname", "orgname", "validator", "json_class", "chef_type"],
    ),
    "KeyList": {
        "type": "array",
        "items": obj(
            {"name": STRING, "uri": URI, "expired": {"type": "boolean"}},
            ["name", "uri", "expired"],
        ),
    },
    "Key": obj(
        {"name": STRING, "public_key": STRING, "expiration_date": STRING},
        ["name", "public_key", "expiration_date"],
    ),
    "KeyRequest": {
        **obj(
            {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,255}$"},
                "expiration_date": {
                    "type": "string",
                    "pattern": "^(infinity|"
                    "([1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])-(0[1-9]|1[0-2])-"
                    "(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|6[01])Z)$",
                    "default": "infinity",
                    "description": "UTC; a day the month does not have (e.g. 02-30): 400.",
                },
                "create_key": {"type": "boolean"},
                "public_key": {"type": "string", "description": "PEM; not with create_key."},
            },
            ["name"],
            closed=False,
        ),
        "description": "A new key: create_key true (the server makes the pair) or public_key.",
        "anyOf": [
            {"required": ["create_key"], "properties": {"create_key": {"const": True}}},
            {"required": ["public_key"]},
        ],
    },
    "KeyCreated": obj(
        {"uri": URI, "private_key": {"type": "string", "description": "With create_key."}},
        ["uri"],
    ),
    "GroupRequest": obj(
        {
            "groupname": GROUP_NAME,
            "name": {"description": "Used (and must be a name) when groupname is absent."},
        },
        closed=False,
    )
    | {
        "anyOf": [
            {"required": ["groupname"]},
            {"required": ["name"], "properties": {"name": GROUP_NAME}},
        ]
    },
    "GroupUpdate": {
        "type": "object",
        "description": "The members (each list replaces the old one; missing = empty), flat or "
        'under "actors". Renaming is refused.',
        "properties": {
            "users": NAME_LIST,
            "clients": NAME_LIST,
            "groups": NAME_LIST,
            "actors": {
                "anyOf": [
                    obj(
                        {"users": NAME_LIST, "clients": NAME_LIST, "groups": NAME_LIST},
                        closed=False,
                    ),
                    NAME_LIST,
                ]
            },
            "groupname": STRING,
        },
    },
    "Group": obj(
        {
            "actors": NAME_LIST,
            "users": NAME_LIST,
            "clients": NAME_LIST,
            "groups": NAME_LIST,
            "orgname": STRING,
            "name": STRING,
            "groupname": STRING,
        },
        ["actors", "users", "clients", "groups", "orgname", "name", "groupname"],
    ),
    "Node": obj(
        {
            "name": STRING,
            "chef_environment": STRING,
            "json_class": {"type": "string", "const": "Chef::Node"},
            "chef_type": {"type": "string", "const": "node"},
            "run_list": NAME_LIST,
            "automatic": {"type": "object"},
            "normal": {"type": "object"},
            "default": {"type": "object"},
            "override": {"type": "object"},
        },
        [
            "name",
            "chef_environment",
            "json_class",
            "chef_type",
            "run_list",
            "automatic",
            "normal",
            "default",
            "override",
        ],
    ),
    "NodeRequest": {
        "type": "object",
        "description": "Chef node JSON; missing parts get defaults (environment _default, "
        "empty run list and attributes); bare run-list names become recipe[NAME]. On PUT, "
        "name may be left out but must otherwise be the URL's (400 Node name mismatch).",
        "properties": {
            "name": ACTOR_NAME,
            "chef_environment": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,255}$"},
            "json_class": {"type": "string", "const": "Chef::Node"},
            "chef_type": {"type": "string", "const": "node"},
            "run_list": {"type": "array", "items": RUN_LIST_ITEM},
            "automatic": {"type": "object"},
            "normal": {"type": "object"},
            "default": {"type": "object"},
            "override": {"type": "object"},
        },
    },
    "SearchIndexes": {
        "type": "object",
        "description": "index name -> its search URL (only node).",
        "additionalProperties": URI,
    },
    "SearchResult": obj(
        {
            "total": {"type": "integer", "minimum": 0},
            "start": {"type": "integer", "minimum": 0},
            "rows": {
                "type": "array",
                "description": "Node records (GET) or partial-search rows (POST).",
                "items": {"anyOf": [ref("Node"), ref("PartialRow")]},
            },
        },
        ["total", "start", "rows"],
    ),
    "PartialRow": obj({"url": URI, "data": {"type": "object"}}, ["url", "data"]),
    "PartialSearchRequest": {
        "description": 'alias -> attribute path, bare or as the only member "filter_result", '
        'e.g. {"name": ["name"], "ip": ["ipaddress"]}.',
        "anyOf": [
            {"type": "object", "additionalProperties": NAME_LIST},
            obj(
                {"filter_result": {"type": "object", "additionalProperties": NAME_LIST}},
                ["filter_result"],
            ),
        ],
    },
}

IDENTITY_SCHEMAS["NodeCreateRequest"] = {**IDENTITY_SCHEMAS["NodeRequest"], "required": ["name"]}

SEARCH_PARAMS = [
    query(
        "q",
        "Chef query (Lucene syntax: field:value, AND/OR/NOT, wildcards, phrases, ranges); "
        "default *:*. Clients that encode it twice are understood. A query that does not "
        "parse: 400.",
        {"type": "string", "minLength": 1},
    ),
    query(
        "start",
        "Index of the first row (default 0).",
        {"type": "string", "pattern": "^[0-9]{1,18}$"},
    ),
    query("rows", "Rows per page (default 1000).", {"type": "string", "pattern": "^[0-9]{1,18}$"}),
    query(
        "sort", "Sort order: FIELD [asc|desc], comma-separated, e.g. 'name asc' (else 400).", STRING
    ),
]
