"""The index document of a node and its flattened fields, as Chef builds them, and their cache."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

_PRECEDENCE = ("default", "normal", "override", "automatic")


def _deep_merge(lower: Any, higher: Any) -> Any:
    """``chef_deep_merge:merge``: hashes merge key by key; anything else is replaced.

    Iterative (no recursion limit); copies every hash it changes, never its inputs."""
    if not (isinstance(lower, dict) and isinstance(higher, dict)):
        return higher
    root = dict(lower)
    stack = [(root, higher)]
    while stack:  # bounded: each hash of ``higher`` is visited once
        target, source = stack.pop()
        for key, value in source.items():
            current = target.get(key)
            if isinstance(current, dict) and isinstance(value, dict):
                merged = target[key] = dict(current)
                stack.append((merged, value))
            else:
                target[key] = value
    return root


def _run_list_names(run_list: Iterable[Any], kind: str) -> list[str]:
    prefix = f"{kind}["
    out = []
    for item in run_list:
        if not isinstance(item, str):
            continue
        if item.startswith(prefix) and item.endswith("]"):
            out.append(item[len(prefix) : -1])
        elif kind == "recipe" and "[" not in item:  # a bare name is a recipe
            out.append(item)
    return out


def index_document(node: Mapping[str, Any]) -> dict[str, Any]:
    """The object Chef indexes and partial search reads: merged attributes + top-level keys."""
    merged: Any = {}
    for level in _PRECEDENCE:
        value = node.get(level)
        if isinstance(value, dict):
            merged = _deep_merge(merged, value)
    run_list = node.get("run_list")
    run_list = list(run_list) if isinstance(run_list, list) else []
    doc = dict(merged)
    doc.update(
        {
            "name": node.get("name", ""),
            "chef_type": "node",
            "chef_environment": node.get("chef_environment", "_default"),
            "recipe": _run_list_names(run_list, "recipe"),
            "role": _run_list_names(run_list, "role"),
            "run_list": run_list,
        }
    )
    return doc


def scalar(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _flatten(doc: Mapping[str, Any]) -> dict[str, list[str]]:
    """``chef_index_expand`` on ``doc``, with an explicit stack (no recursion limit)."""
    out: dict[str, list[str]] = {}

    def add(path: tuple[str, ...], value: str) -> None:
        out.setdefault("_".join(path), []).append(value)
        if len(path) > 1:
            out.setdefault(path[-1], []).append(value)

    stack: list[tuple[tuple[str, ...], Any]] = [((), doc)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            children = []
            for key, child in value.items():
                key = scalar(key)
                if path:
                    add(path, key)
                children.append((path + (key,), child))
            stack.extend(reversed(children))
        elif isinstance(value, list | tuple):
            stack.extend((path, item) for item in reversed(value))
        elif path:
            add(path, scalar(value))
    return {field: list(dict.fromkeys(values)) for field, values in out.items()}


def flatten_node(node: Mapping[str, Any]) -> dict[str, list[str]]:
    """Chef's index document of a node record: field name → its string values."""
    doc = index_document(node)
    fields = _flatten(doc)
    fields["X_CHEF_type_CHEF_X"] = ["node"]
    for many, one in (("roles", "role"), ("recipes", "recipe")):
        values = list(dict.fromkeys(doc[one] + fields.get(many, [])))
        if values:
            fields[many] = values
    return fields


class Doc:
    """One indexed node: the record, its fields, and (lazily) the set of all its values."""

    __slots__ = ("node", "fields", "_values", "_document")

    def __init__(self, node: Mapping[str, Any]) -> None:
        self.node = node
        self.fields = {f: tuple(v) for f, v in flatten_node(node).items()}
        self._values: frozenset[str] | None = None
        self._document: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return scalar(self.node.get("name", ""))

    def values(self) -> frozenset[str]:
        if self._values is None:
            self._values = frozenset(v for vs in self.fields.values() for v in vs)
        return self._values

    def document(self) -> dict[str, Any]:
        if self._document is None:
            self._document = index_document(self.node)
        return self._document


class IndexCache:
    """Indexed documents of one set of node records (one org), kept between searches.

    Keyed by the record's identity: a saved node replaces the record in the state
    (``identity.apply``), it is never changed in place, so a record seen again is unchanged.
    The cache holds the record itself, so its id cannot be reused while cached, and each
    `docs` call keeps only the records it was given, so deleted nodes do not linger.
    """

    def __init__(self) -> None:
        self._docs: dict[int, Doc] = {}

    def __len__(self) -> int:
        return len(self._docs)

    def lookup(self, node: Mapping[str, Any]) -> Doc | None:
        doc = self._docs.get(id(node))
        return doc if doc is not None and doc.node is node else None

    def docs(self, nodes: Iterable[Mapping[str, Any]]) -> list[Doc]:
        old, new = self._docs, {}
        out = []
        for node in nodes:
            key = id(node)
            doc = old.get(key)
            if doc is None or doc.node is not node:
                doc = Doc(node)
            new[key] = doc
            out.append(doc)
        self._docs = new
        return out
