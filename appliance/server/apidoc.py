"""Each route's OpenAPI operation, declared beside its handler; the document's paths are read
back from an app's url_map, so a route cannot be served undocumented or documented unserved.

A handler is a module-level function whose first argument is the server context; a route
module lists ``(path, handler)`` in a table and ``register`` binds the context to each handler
(``functools.partial``) as it adds the rule. ``@operation`` attaches the declaration; the
methods a rule answers are the methods declared on its handler.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from quart import Blueprint, Quart

__all__ = [
    "Operation",
    "alias",
    "request_body",
    "json_reply",
    "operation",
    "operations_of",
    "path_param",
    "paths",
    "query",
    "ref",
    "register",
    "resp",
]

JSON = "application/json"
Schema = dict[str, Any]
F = TypeVar("F", bound=Callable[..., Any])
_ATTR = "__openapi__"
_IGNORED_METHODS = {"HEAD", "OPTIONS"}
_METHOD_ORDER = ("GET", "PUT", "POST", "DELETE", "PATCH")


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def resp(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def json_reply(description: str, schema: Schema, headers: dict[str, Any] | None = None) -> Schema:
    out: Schema = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def path_param(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema or {"type": "string", "minLength": 1, "pattern": "^[^/]+$"},
    }


def query(name: str, description: str, schema: Schema, required: bool = False) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


def request_body(schema: Schema, description: str, example: Any = None) -> Schema:
    media: Schema = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"required": True, "description": description, "content": {JSON: media}}


# what every signed route may answer, and every route that writes state or reads a body
_SIGNED = {
    "400": resp("BadRequest"),
    "401": resp("Unauthorized"),
    "403": resp("Forbidden"),
    "404": resp("NotFound"),
    "406": resp("NotAcceptable"),
    "500": resp("InternalError"),
}
_WRITES = {"413": resp("PayloadTooLarge"), "503": resp("Unavailable")}


@dataclass(frozen=True)
class Operation:
    """One method of one route, as the document shows it."""

    method: str
    op_id: str
    tag: str
    summary: str
    responses: Mapping[str, Any]
    description: str | None = None
    parameters: tuple[Schema, ...] = ()
    body: Schema | None = None
    signed: bool = True
    writes: bool = False
    websocket: bool = False
    session: bool = False  # the web dashboard's session cookie is accepted too
    extra: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> Schema:
        out: Schema = {"operationId": self.op_id, "tags": [self.tag], "summary": self.summary}
        if self.description:
            out["description"] = self.description
        if self.parameters:
            out["parameters"] = list(self.parameters)
        if self.body is not None:
            out["requestBody"] = self.body
        merged = {
            **(_SIGNED if self.signed else {}),
            **(_WRITES if self.writes else {}),
            **self.responses,
        }
        if self.body is not None:
            merged.setdefault("413", resp("PayloadTooLarge"))
        out["responses"] = dict(sorted(merged.items()))
        if not self.signed:
            out["security"] = []
        elif self.session:
            out["security"] = [{"chefSignedHeaders": []}, {"dashboardSession": []}]
        out.update(self.extra)
        return out


def operation(
    method: str,
    op_id: str,
    tag: str,
    summary: str,
    responses: Mapping[str, Any],
    *,
    parameters: Iterable[Schema] = (),
    **options: Any,
) -> Callable[[F], F]:
    """Declare the handler's operation for ``method`` (stack one per method it answers)."""

    def attach(handler: F) -> F:
        declared = dict(getattr(handler, _ATTR, {}))
        op = Operation(method.upper(), op_id, tag, summary, responses, **options)
        declared[op.method] = replace(op, parameters=tuple(parameters))
        setattr(handler, _ATTR, declared)
        return handler

    return attach


def operations_of(view: Callable[..., Any]) -> dict[str, Operation]:
    """The operations declared on a handler (through any ``functools.partial``), by method."""
    while isinstance(view, functools.partial):
        view = view.func
    return dict(getattr(view, _ATTR, {}))


def alias(handler: F, op_id: str, note: str) -> F:
    """The handler under a second path: its own operation ids, ``note`` added to summaries."""

    async def aliased(*args: Any, **kwargs: Any) -> Any:
        return await handler(*args, **kwargs)

    aliased.__name__ = op_id
    ops = {
        method: replace(op, op_id=op_id, summary=f"{op.summary} ({note})")
        for method, op in operations_of(handler).items()
    }
    setattr(aliased, _ATTR, ops)
    return aliased  # type: ignore[return-value]


def register(bp: Blueprint, routes: Iterable[tuple[str, Callable[..., Any]]], ctx: Any) -> None:
    """Add each ``(path, handler)`` with ``ctx`` bound as the handler's first argument."""
    for path, handler in routes:
        ops = operations_of(handler)
        assert ops, f"{path}: the handler declares no operation"
        endpoint = min(op.op_id for op in ops.values())
        view = functools.partial(handler, ctx)
        if any(op.websocket for op in ops.values()):
            bp.add_websocket(path, endpoint, view)  # strict slashes, as it always was
        else:
            bp.add_url_rule(path, endpoint, view, methods=sorted(ops), strict_slashes=False)


def paths(app: Quart) -> dict[str, dict[str, Schema]]:
    """The document's ``paths``: every rule of ``app`` with its handler's declarations
    (a rule without one is left out; tests/e2e/test_openapi.py reports it)."""
    out: dict[str, dict[str, Schema]] = {}
    for rule in app.url_map.iter_rules():
        ops = operations_of(app.view_functions.get(rule.endpoint, lambda: None))
        template = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in _METHOD_ORDER:
            if method in (rule.methods or ()) and method in ops:
                out.setdefault(template, {})[method.lower()] = ops[method].as_json()
    return out
