"""Running a query over node records: sorting, paging and partial-search rows."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from appliance.core.search.errors import QueryError
from appliance.core.search.index import Doc, IndexCache, index_document, scalar
from appliance.core.search.parser import parse_query
from appliance.core.search.query import Query, as_number

DEFAULT_ROWS = 1000
ID_FIELD = "X_CHEF_id_CHEF_X"


@dataclass(frozen=True)
class _SortKey:
    field: str
    descending: bool


def parse_sort(text: str | None) -> list[_SortKey]:
    """``FIELD [asc|desc]`` separated by commas; ``X_CHEF_id_CHEF_X`` means the node name."""
    if text is None or not text.strip():
        return []
    keys = []
    offset = 0
    for part in text.split(","):
        words = part.split()
        pos = offset + (len(part) - len(part.lstrip()))
        offset += len(part) + 1
        if not words or len(words) > 2:
            raise QueryError(f"sort must be 'FIELD [asc|desc]' at position {pos}", pos)
        direction = words[1].lower() if len(words) == 2 else "asc"
        if direction not in ("asc", "desc"):
            at = pos + part.strip().find(words[1])
            raise QueryError(f"sort direction must be asc or desc at position {at}", at)
        field = "name" if words[0] == ID_FIELD else words[0]
        keys.append(_SortKey(field, direction == "desc"))
    return keys


def _sort_value(doc: Doc, field: str) -> tuple[int, Any] | None:
    values = doc.fields.get(field)
    if not values:
        return None
    numbers = [as_number(v) for v in values]
    if all(x is not None for x in numbers):
        return (0, min(numbers))  # type: ignore[type-var]
    return (1, min(values))


def _sorted(docs: list[Doc], keys: list[_SortKey]) -> list[Doc]:
    out = sorted(docs, key=lambda d: d.name)
    for key in reversed(keys):  # stable passes, last key first; missing values sort last
        present = [(v, d) for d in out if (v := _sort_value(d, key.field)) is not None]
        missing = [d for d in out if key.field not in d.fields or not d.fields[key.field]]
        present.sort(key=lambda pair: pair[0], reverse=key.descending)
        out = [d for _, d in present] + missing
    return out


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
    return value


def search(
    nodes: Iterable[Mapping[str, Any]],
    query: str | Query,
    *,
    start: int = 0,
    rows: int = DEFAULT_ROWS,
    sort: str | None = None,
    cache: IndexCache | None = None,
) -> tuple[int, list[Mapping[str, Any]]]:
    """(number of matches, the node records of the page ``[start, start + rows)``)."""
    _check_count("start", start)
    _check_count("rows", rows)
    parsed = parse_query(query) if isinstance(query, str) else query
    keys = parse_sort(sort)
    docs = cache.docs(nodes) if cache is not None else [Doc(n) for n in nodes]
    hits = [d for d in docs if parsed.matches(d)]
    ordered = _sorted(hits, keys)
    return len(ordered), [d.node for d in ordered[start : start + rows]]


# --------------------------------------------------------------------------- partial search


def parse_filter_result(body: Any) -> dict[str, list[str]]:
    """The partial-search mapping ``{alias: [key, ...]}``, bare or as ``{"filter_result": ...}``.

    Raises ValueError("invalid partial search request body") otherwise, Chef's message.
    """
    if (
        isinstance(body, dict)
        and set(body) == {"filter_result"}
        and isinstance(body["filter_result"], dict)
    ):
        body = body["filter_result"]
    if not isinstance(body, dict):
        raise ValueError("invalid partial search request body")
    for alias, path in body.items():
        if not isinstance(alias, str) or not isinstance(path, list):
            raise ValueError("invalid partial search request body")
        if not all(isinstance(key, str) for key in path):
            raise ValueError("invalid partial search request body")
    return body


def _extract(document: Mapping[str, Any], path: list[str]) -> Any:
    if not path:
        return None
    value: Any = document
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def partial(
    rows: Iterable[Mapping[str, Any]],
    filter_result: Mapping[str, list[str]],
    *,
    url_for: Callable[[Mapping[str, Any]], str] | None = None,
    cache: IndexCache | None = None,
) -> list[dict[str, Any]]:
    """Chef partial search rows ``{"url": ..., "data": {alias: value at path}}``.

    Paths read the index document (merged attributes plus ``name``, ``chef_environment``,
    ``run_list``, ``recipe``, ``role``); a missing path is ``None``. ``url_for`` makes the
    row's url from the node record (the route knows the base URL); by default the name.
    """
    out = []
    for node in rows:
        doc = cache.lookup(node) if cache is not None else None
        document = doc.document() if doc is not None else index_document(node)
        url = url_for(node) if url_for is not None else scalar(node.get("name", ""))
        data = {alias: _extract(document, list(path)) for alias, path in filter_result.items()}
        out.append({"url": url, "data": data})
    return out
