"""The component schemas of the identity API and node search (Chef's shapes), and search's
query parameters.

The request bodies' schemas are the core's (``core.identity.schemas``): the handlers' checks
read them too.
"""

from __future__ import annotations

from typing import Any

from appliance.core.identity.schemas import REQUEST_SCHEMAS
from appliance.server.apidoc import query, ref
from appliance.server.schemas import NAME_LIST, STRING, URI, obj

Schema = dict[str, Any]

IDENTITY_SCHEMAS: dict[str, Schema] = {
    "NameMap": {
        "type": "object",
        "description": "name -> URL of the object.",
        "additionalProperties": URI,
    },
    "Created": obj({"uri": URI}, ["uri"]),
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
    "OrgUsers": {
        "type": "array",
        "items": obj({"user": obj({"username": STRING}, ["username"])}, ["user"]),
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
    "KeyCreated": obj(
        {"uri": URI, "private_key": {"type": "string", "description": "With create_key."}},
        ["uri"],
    ),
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
    **REQUEST_SCHEMAS,
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
