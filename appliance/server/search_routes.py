"""Chef node search (``/organizations/ORG/search[/node]``) over the org's node records.

Thin shell over ``core.search``: authenticate, check the requester may read the org's objects,
read the query string as Chef does, run the search off the trio thread (a cold search over
thousands of records takes a noticeable fraction of a second), answer in Chef's shapes:
``{"total", "start", "rows"}`` with full node records, or partial-search rows
``{"url", "data"}`` for a POST. Errors use Chef's messages (``invalid search query: '...'``,
``invalid 'start' value: '...'``, ``invalid partial search request body``), with the problem
and its position appended for a malformed query.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any
from urllib.parse import unquote

import orjson
import trio
from quart import Blueprint, Response, request

from appliance.core import identity
from appliance.core import search as core
from appliance.core.render import error_list
from appliance.server.apidoc import json_reply, operation, path_param, ref, register, request_body
from appliance.server.auth import JSON, authenticate, fail, require_accept
from appliance.server.context import ServerContext
from appliance.server.identity_schemas import SEARCH_PARAMS
from appliance.server.pushy_routes import base_url, json_response
from appliance.server.schemas import ORG as ORG_P

ORG = "/organizations/<org>"
INDEXES = ("node",)
TAG = "search"
INDEX_P = path_param("index", "node")


def _may_read(ids: identity.IdentityState, org: str, principal: identity.Principal) -> bool:
    """Like ``identity._is_reader``: org members, except the validator (it only registers)."""
    if not identity.is_org_member(ids, org, principal):
        return False
    if principal.kind != "client":
        return True
    client = ids.orgs[org].clients.get(principal.name)
    return client is None or not client.validator


def _arg(name: str) -> str | None:
    """A query-string value decoded once more: Chef's search client encodes the query twice
    (and erchef decodes it twice), so ``%253A`` arrives here as ``%3A`` and means ``:``."""
    value = request.args.get(name)
    return None if value is None else unquote(value)


def _count(name: str, default: int) -> int:
    raw = _arg(name)
    if raw is None:
        return default
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        fail(400, error_list(f"invalid '{name}' value: '{raw}'"))
    return int(text)


class _OrgIndex:
    """One org's index cache; searches of an org run one at a time (the cache is not shared
    between threads)."""

    def __init__(self) -> None:
        self.cache = core.IndexCache()
        self.lock = trio.Lock()


async def _reader(ctx: ServerContext, org: str) -> None:
    auth = await authenticate(ctx, org, session=True)
    require_accept(JSON)
    if not _may_read(ctx.state.identity, org, auth.principal):
        fail(403, error_list("missing read permission"))


@operation(
    "GET",
    "listSearchIndexes",
    TAG,
    "Search indexes",
    {"200": json_reply("The indexes.", ref("SearchIndexes"))},
    parameters=[ORG_P],
    session=True,
)
async def index_list(ctx: ServerContext, org: str) -> Response:
    await _reader(ctx, org)
    prefix = f"{base_url()}/organizations/{org}/search"
    return json_response({name: f"{prefix}/{name}" for name in INDEXES})


@operation(
    "GET",
    "searchNodes",
    TAG,
    "Search node records",
    {"200": json_reply("One page of matching nodes.", ref("SearchResult"))},
    description="Only the node index exists (another index: 404).",
    parameters=[ORG_P, INDEX_P, *SEARCH_PARAMS],
    session=True,
)
@operation(
    "POST",
    "partialSearchNodes",
    TAG,
    "Partial search: selected attributes of matching nodes",
    {"200": json_reply("One page of {url, data} rows.", ref("SearchResult"))},
    parameters=[ORG_P, INDEX_P, *SEARCH_PARAMS],
    body=request_body(
        ref("PartialSearchRequest"),
        "What to return for each node.",
        {"name": ["name"], "ip": ["ipaddress"]},
    ),
    writes=False,
    session=True,
)
async def run(
    ctx: ServerContext, org: str, index: str, *, indexes: dict[str, _OrgIndex]
) -> Response:
    await _reader(ctx, org)
    if index not in INDEXES:
        fail(
            404,
            error_list(
                f"I don't know how to search for {index} data objects: "
                "this server indexes only nodes (/search/node)."
            ),
        )
    query = _arg("q")
    if query is None:
        query = "*:*"
    start = _count("start", 0)
    rows = _count("rows", core.DEFAULT_ROWS)
    sort = _arg("sort")
    try:
        core.parse_sort(sort)
    except core.QueryError as exc:
        fail(400, error_list(f"invalid 'sort' value: '{sort}': {exc.message}"))
    try:
        parsed = core.parse_query(query)
    except core.QueryError as exc:
        fail(400, error_list(f"invalid search query: '{query}': {exc.message}"))
    filter_result = await _filter_result() if request.method == "POST" else None

    nodes = list(ctx.state.identity.orgs[org].nodes.values())  # records are never mutated
    prefix = f"{base_url()}/organizations/{org}/nodes/"

    def url_for(node: Mapping[str, Any]) -> str:
        return prefix + str(node.get("name", ""))

    def work() -> tuple[int, list[Any]]:
        total, found = core.search(
            nodes, parsed, start=start, rows=rows, sort=sort, cache=slot.cache
        )
        if filter_result is None:
            return total, found
        return total, core.partial(found, filter_result, url_for=url_for, cache=slot.cache)

    slot = indexes.setdefault(org, _OrgIndex())
    async with slot.lock:
        total, found = await trio.to_thread.run_sync(work)
    return json_response({"total": total, "start": start, "rows": found})


def blueprint(ctx: ServerContext) -> Blueprint:
    bp = Blueprint("search", __name__)
    register(
        bp,
        [
            (ORG + "/search", index_list),
            (ORG + "/search/<index>", partial(run, indexes={})),  # one cache per org
        ],
        ctx,
    )
    return bp


async def _filter_result() -> dict[str, list[str]]:
    raw = await request.get_data(cache=True)
    try:
        return core.parse_filter_result(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValueError):
        fail(400, error_list("invalid partial search request body"))
