"""JSON Schema, the small subset the request bodies use: building object schemas and checking a
value against one, so that the API document and the validators read one declaration.

The checker knows only the keywords listed in ``_ANNOTATIONS`` and ``fits``; any other keyword
is an error (a schema that says more than its checker reads would drift from it unseen).
Patterns are read as ECMA-262 reads them (JSON Schema's dialect) as long as they avoid the
classes where Python differs (``\\d``, ``\\s``, ``\\w``, ``\\b``: tests/unit/test_schemacheck.py
keeps the request schemas free of them): a pattern ending in ``$`` is matched against the
whole string, so that, as in ECMA, ``$`` never matches before a final newline.

The checks report *which* field is wrong and whether it is missing, not a message: each
caller keeps its own (the original servers') texts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

__all__ = [
    "NAME_LIST",
    "STRING",
    "Problem",
    "Schema",
    "first_problem",
    "fits",
    "has_types",
    "obj",
]

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
NAME_LIST: Schema = {"type": "array", "items": {"type": "string"}}

#: Keywords that only describe (the document shows them; nothing to check).
_ANNOTATIONS = frozenset({"description", "default", "example", "examples", "title", "format"})


def obj(
    props: dict[str, Schema], required: list[str] | None = None, *, closed: bool = True
) -> Schema:
    """An object schema; ``closed``: no key beyond ``props``."""
    out: Schema = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    if closed:
        out["additionalProperties"] = False
    return out


@dataclass(frozen=True)
class Problem:
    """The first fault found in an object: ``field`` is missing, or present but does not fit."""

    field: str
    missing: bool


def first_problem(
    schema: Schema,
    body: dict[str, Any],
    *,
    only: Container[str] | None = None,
    fit: Callable[[Schema, Any], bool] | None = None,
) -> Problem | None:
    """The first property of ``schema`` (in its declared order, which is the order the
    original checked them) that ``body`` lacks although required, or holds in a form the
    schema refuses; None when all fit. ``only`` limits the walk to some properties (a caller
    whose original checked something else in between walks in two steps). Keys the schema
    does not declare are not looked at. ``fit`` replaces ``fits`` (e.g. a types-only walk)."""
    fit = fits if fit is None else fit
    required = schema.get("required", ())
    for name, sub in schema["properties"].items():
        if only is not None and name not in only:
            continue
        if name not in body:
            if name in required:
                return Problem(name, missing=True)
        elif not fit(sub, body[name]):
            return Problem(name, missing=False)
    return None


def _has_type(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "null":
        return value is None
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    raise ValueError(f"schemacheck: unknown type {kind!r}")


def _type_fits(want: str | list[str], value: Any, number_for_integer: bool = False) -> bool:
    """``type`` (one name or a list of them) against ``value``."""
    kinds = [want] if isinstance(want, str) else want
    for kind in kinds:
        if number_for_integer and kind == "integer":
            kind = "number"
        if _has_type(kind, value):
            return True
    return False


def has_types(schema: Schema, value: Any, *, number_for_integer: bool = False) -> bool:
    """Whether ``value`` and what it holds (``items``, ``properties``, ``additionalProperties``)
    have the JSON types ``schema`` declares; every other keyword is left out. For a caller that
    checks types first and the rest later, each fault with its own message (the original
    servers' order). ``number_for_integer``: an integer field takes any number, for a caller
    that refuses fractions later with a message of their own."""
    want = schema.get("type")
    if want is not None and not _type_fits(want, value, number_for_integer):
        return False
    if isinstance(value, list):
        items = schema.get("items")
        return items is None or all(
            has_types(items, v, number_for_integer=number_for_integer) for v in value
        )
    if isinstance(value, dict):
        declared = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, v in value.items():
            sub = declared.get(key, extra)
            if isinstance(sub, dict) and not has_types(
                sub, v, number_for_integer=number_for_integer
            ):
                return False
    return True


def _matches(pattern: str, text: str) -> bool:
    """ECMA's search, for patterns free of the classes where Python differs."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        return re.fullmatch(pattern, text) is not None
    return re.search(pattern, text) is not None


def _same(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1."""
    return type(a) is type(b) and a == b


def fits(schema: Schema, value: Any) -> bool:
    """Whether ``value`` is valid against ``schema``."""
    for key, want in schema.items():
        if key in _ANNOTATIONS:
            continue
        if key == "type":
            if not _type_fits(want, value):
                return False
        elif key == "const":
            if not _same(value, want):
                return False
        elif key == "anyOf":
            if not any(fits(s, value) for s in want):
                return False
        elif key == "pattern":
            if isinstance(value, str) and not _matches(want, value):
                return False
        elif key in ("minLength", "maxLength"):
            if isinstance(value, str) and not (
                len(value) >= want if key == "minLength" else len(value) <= want
            ):
                return False
        elif key in ("minimum", "maximum"):
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if number and not (value >= want if key == "minimum" else value <= want):
                return False
        elif key == "items":
            if isinstance(value, list) and not all(fits(want, v) for v in value):
                return False
        elif key == "properties":
            if isinstance(value, dict) and not all(
                fits(sub, value[name]) for name, sub in want.items() if name in value
            ):
                return False
        elif key == "required":
            if isinstance(value, dict) and not all(name in value for name in want):
                return False
        elif key == "additionalProperties":
            if isinstance(value, dict) and not _extra_keys_fit(schema, want, value):
                return False
        else:
            raise ValueError(f"schemacheck: keyword {key!r} is not supported")
    return True


def _extra_keys_fit(schema: Schema, want: bool | Schema, value: dict[str, Any]) -> bool:
    declared = schema.get("properties", {})
    extra = [v for k, v in value.items() if k not in declared]
    if want is False:
        return not extra
    if want is True:
        return True
    return all(fits(want, v) for v in extra)
