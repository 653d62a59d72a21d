"""The identity API's request bodies as JSON Schema: one declaration for the handlers' checks
(``checks.body_problem``) and the API document (``server/identity_schemas``).

Each object schema lists its properties in the order the handlers check them, so a body with
several faults keeps the original's message. Bodies are open (Chef lets clients send more
keys). What a schema cannot say stays in the handlers and is named in the descriptions: a
PEM's content, create_key with public_key, a real calendar day, names that must match the
URL or exist.
"""

from __future__ import annotations

from appliance.core.schemacheck import NAME_LIST, STRING, Schema, obj

__all__ = [
    "ACTOR_NAME",
    "ASSOCIATION",
    "BARE_RECIPE",
    "CLIENT_REQUEST",
    "GROUP_ACTORS",
    "GROUP_MEMBERS",
    "GROUP_REQUEST",
    "GROUP_UPDATE",
    "KEY_REQUEST",
    "NODE_CREATE_REQUEST",
    "NODE_REQUEST",
    "ORG_REQUEST",
    "QUALIFIED_RUN_LIST_ITEM",
    "REQUEST_SCHEMAS",
    "USER_REQUEST",
    "with_alias",
]

#: Users, clients, nodes, keys.
ACTOR_NAME: Schema = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,255}$"}
GROUP_NAME: Schema = {"type": "string", "pattern": "^[a-z0-9_-]{1,255}$"}
ORG_NAME: Schema = GROUP_NAME  # Chef's rule for both

#: Python's ``\s`` spelled out: ECMA's ``\s`` differs (it lacks x1c-x1f and x85, has xfeff).
_SPACE = "\\x09-\\x0d\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
#: A run-list item kept as it is, and a bare name, which becomes recipe[NAME].
QUALIFIED_RUN_LIST_ITEM = f"(recipe|role)\\[[^\\[\\]{_SPACE}]+\\]"
BARE_RECIPE = "[A-Za-z0-9_.:@-]+"
RUN_LIST_ITEM: Schema = {
    "type": "string",
    "pattern": f"^({QUALIFIED_RUN_LIST_ITEM}|{BARE_RECIPE})$",
    "description": "recipe[NAME], role[NAME], or a bare recipe name.",
}
#: ``null`` is taken as "no key" (the handlers read it with ``dict.get``).
PUBLIC_KEY: Schema = {"type": ["string", "null"], "description": "PEM; not with create_key."}
CREATE_KEY: Schema = {"type": "boolean"}

ORG_REQUEST = obj(
    {"name": ORG_NAME, "full_name": {"type": "string", "minLength": 1, "maxLength": 1023}},
    ["name", "full_name"],
    closed=False,
)
USER_REQUEST = obj(
    {
        "username": ACTOR_NAME,
        "display_name": STRING,
        "email": STRING,
        "first_name": STRING,
        "last_name": STRING,
        "create_key": CREATE_KEY,
        "public_key": PUBLIC_KEY,
    },
    ["username"],
    closed=False,
)
ASSOCIATION = obj({"username": ACTOR_NAME}, ["username"], closed=False)
#: As checked, once ``clientname`` stood in for a missing ``name`` (``with_alias``).
CLIENT_REQUEST = obj(
    {
        "name": ACTOR_NAME,
        "validator": {"type": "boolean"},
        "create_key": CREATE_KEY,
        "public_key": PUBLIC_KEY,
    },
    ["name"],
    closed=False,
)
KEY_REQUEST: Schema = {
    **obj(
        {
            "name": ACTOR_NAME,
            "expiration_date": {
                "type": "string",
                "pattern": "^(infinity|"
                "([1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])-(0[1-9]|1[0-2])-"
                "(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|6[01])Z)$",
                "default": "infinity",
                "description": "UTC; a day the month does not have (e.g. 02-30): 400.",
            },
            "create_key": CREATE_KEY,
            "public_key": PUBLIC_KEY,
        },
        ["name"],
        closed=False,
    ),
    "description": "A new key: create_key true (the server makes the pair) or public_key.",
    "anyOf": [
        {"required": ["create_key"], "properties": {"create_key": {"const": True}}},
        {"required": ["public_key"], "properties": {"public_key": STRING}},
    ],
}
#: As checked, once ``name`` stood in for a missing ``groupname`` (``with_alias``).
GROUP_REQUEST = obj({"groupname": GROUP_NAME}, ["groupname"], closed=False)
#: The member lists, flat in the body or under ``actors``.
GROUP_MEMBERS = obj({"users": NAME_LIST, "clients": NAME_LIST, "groups": NAME_LIST}, closed=False)
#: An object holds the lists; a list (what GET returns) or null is ignored.
GROUP_ACTORS: Schema = {"anyOf": [GROUP_MEMBERS, {"type": ["array", "null"]}]}
GROUP_UPDATE: Schema = {
    "type": "object",
    "description": "The members (each list replaces the old one; missing = empty), flat or "
    'under "actors" (then the flat lists are ignored). Renaming is refused.',
    "properties": {"actors": GROUP_ACTORS, "groupname": STRING},
    "anyOf": [
        {"required": ["actors"], "properties": {"actors": {"type": "object"}}},
        {"properties": GROUP_MEMBERS["properties"]},
    ],
}
NODE_REQUEST: Schema = {
    "type": "object",
    "description": "Chef node JSON; missing parts get defaults (environment _default, "
    "empty run list and attributes); bare run-list names become recipe[NAME]. On PUT, "
    "name may be left out but must otherwise be the URL's (400 Node name mismatch).",
    "properties": {
        "name": ACTOR_NAME,
        "chef_environment": {
            "type": "string",
            "pattern": "^[A-Za-z0-9_-]{1,255}$",
            "default": "_default",
        },
        "json_class": {"type": "string", "const": "Chef::Node"},
        "chef_type": {"type": "string", "const": "node"},
        "run_list": {"type": "array", "items": RUN_LIST_ITEM},
        "automatic": {"type": "object"},
        "normal": {"type": "object"},
        "default": {"type": "object"},
        "override": {"type": "object"},
    },
}
NODE_CREATE_REQUEST: Schema = {**NODE_REQUEST, "required": ["name"]}


def with_alias(schema: Schema, field: str, alias: str) -> Schema:
    """``schema`` as the document shows it when ``alias`` stands in for a missing ``field``
    (Chef's clientname for name, name for groupname): either one is required, and the alias
    must then be a valid ``field``."""
    props: dict[str, Schema] = {}
    for name, sub in schema["properties"].items():
        props[name] = sub
        if name == field:
            props[alias] = {"description": f"Used (and must be a name) when {field} is absent."}
    out = {k: v for k, v in schema.items() if k != "required"} | {"properties": props}
    required = [r for r in schema.get("required", ()) if r != field]
    if required:
        out["required"] = required
    out["anyOf"] = [
        {"required": [field]},
        {"required": [alias], "properties": {alias: schema["properties"][field]}},
    ]
    return out


#: The request bodies' components of the API document, by component name.
REQUEST_SCHEMAS: dict[str, Schema] = {
    "OrgRequest": ORG_REQUEST,
    "UserRequest": USER_REQUEST,
    "Association": ASSOCIATION,
    "ClientRequest": with_alias(CLIENT_REQUEST, "name", "clientname"),
    "KeyRequest": KEY_REQUEST,
    "GroupRequest": with_alias(GROUP_REQUEST, "groupname", "name"),
    "GroupUpdate": GROUP_UPDATE,
    "NodeRequest": NODE_REQUEST,
    "NodeCreateRequest": NODE_CREATE_REQUEST,
}
