"""``pushy node status`` (knife-push's ``knife node status``) and ``pushy node list``, plus the
node search shared with ``pushy job start --search``.

Search goes through the appliance's own Chef search API (``GET search/node?q=``), and unlike
knife reads every page of results (knife-push uses only the first page of rows).
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from typing import Any

from appliance.knife import output
from appliance.knife.credentials import connect
from appliance.knife.session import Api, ApiError, CliError, error_text

SEARCH_PAGE_ROWS = 1000
EXIT_UNKNOWN_NODE = 1  # a named node the organization does not have (the others are printed)
MAX_SEARCH_PAGES = 10_000


def search_node_names(api: Api, query: str, *, page_rows: int = SEARCH_PAGE_ROWS) -> list[str]:
    """The names of every node matching ``query`` (all pages, first-seen order, no repeats).

    A 4xx from the search is knife's ``knife search failed: <server message>`` with exit 1;
    other errors are exit 100."""
    names: list[str] = []
    seen: set[str] = set()
    start = 0
    path = api.org_path("search/node")
    for _ in range(MAX_SEARCH_PAGES):
        q = urllib.parse.urlencode({"q": query, "start": start, "rows": page_rows})
        reply = api.request("GET", f"{path}?{q}")
        if 400 <= reply.status < 500:
            raise CliError(f"knife search failed: {error_text(reply.body())}", 1)
        if not 200 <= reply.status < 300:
            raise ApiError(reply.status, reply.body(), "GET", path)
        body = reply.body()
        rows = body.get("rows") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            raise CliError(f"GET {path}: unexpected search answer {str(body)[:200]!r}")
        for row in rows:
            name = row.get("name") if isinstance(row, dict) else None
            if isinstance(name, str) and name not in seen:
                seen.add(name)
                names.append(name)
        start += len(rows)
        total = body.get("total")
        if not rows or not isinstance(total, int) or start >= total:
            break
    return names


def node_states(api: Api, names: list[str]) -> list[dict[str, Any]]:
    """knife's ``node status``: all nodes' states (the offline ones too, unlike knife), or
    one GET per name; an argument holding ``:`` is a search query whose nodes are looked up
    one by one."""
    if not names:
        states = api.get(api.org_path("pushy/node_states"))
        return with_offline_nodes(api, states if isinstance(states, list) else [])
    found: list[dict[str, Any]] = []
    for arg in names:
        for name in search_node_names(api, arg) if ":" in arg else [arg]:
            quoted = urllib.parse.quote(name, safe="")
            found.append(api.get(api.org_path(f"pushy/node_states/{quoted}")))
    return found


def status_lines(states: list[dict[str, Any]]) -> str:
    """``name<TAB>availability`` per node, as knife prints them."""
    return "".join(f"{s.get('node_name')}\t{s.get('availability')}\n" for s in states)


def missing_clients(api: Api, names: list[str]) -> list[str]:
    """The ``names`` the organization has no client for (one GET of the client list). A
    caller who may not list clients gets no verdict: every name counts as known."""
    if not names:
        return []
    reply = api.request("GET", api.org_path("clients"))
    clients = reply.body() if reply.status == 200 else None
    if not isinstance(clients, dict):
        return []
    return [name for name in names if name not in clients]


def unknown_nodes(api: Api, states: list[dict[str, Any]], named: set[str]) -> list[str]:
    """The ``named`` nodes among ``states`` that the organization has no client for: the
    server answers "offline, unavailable" for any name, so a typo looked like a node that is
    down."""
    offline = [
        str(s.get("node_name"))
        for s in states
        if s.get("node_name") in named and s.get("status") == "offline"
    ]
    return missing_clients(api, offline)


def with_offline_nodes(api: Api, states: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The server lists only the nodes it has online (as the original does), so a node whose
    client stopped would vanish from the list: the organization's other nodes (its Chef node
    records) are added as ``unavailable``, as the server answers for each of them by name. A
    caller who may not list the node records gets the server's list alone."""
    reply = api.request("GET", api.org_path("nodes"))
    records = reply.body() if reply.status == 200 else None
    if not isinstance(records, dict):
        return states
    listed = {s.get("node_name") for s in states}
    extra = [
        {"node_name": name, "availability": "unavailable"} for name in records if name not in listed
    ]
    return sorted(states + extra, key=lambda s: str(s.get("node_name")))


def run_status(args: argparse.Namespace) -> int:
    api = connect(args)
    states = node_states(api, list(args.nodes))
    unknown = unknown_nodes(api, states, {n for n in args.nodes if ":" not in n})
    states = [s for s in states if s.get("node_name") not in unknown]
    if args.format == "json":
        output.emit(states, "json", sys.stdout)
    else:
        sys.stdout.write(status_lines(states))
        sys.stdout.flush()
    for name in unknown:
        print(
            f"pushy node status: no node named '{name}' in organization '{api.org}' "
            "(no client of that name)",
            file=sys.stderr,
        )
    return EXIT_UNKNOWN_NODE if unknown else 0


def run_list(args: argparse.Namespace) -> int:
    api = connect(args)
    if args.search:
        names = sorted(search_node_names(api, args.search))
    else:
        records = api.get(api.org_path("nodes"))
        names = sorted(records) if isinstance(records, dict) else []
    if args.format == "json":
        output.emit(names, "json", sys.stdout)
    else:
        sys.stdout.write("".join(f"{name}\n" for name in names))
        sys.stdout.flush()
    return 0


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    node = sub.add_parser(
        "node",
        help="node availability and node lists (knife node status)",
        description="Which nodes the push jobs server can reach, and the node records.",
    )
    node.set_defaults(operator=True)
    nsub = node.add_subparsers(dest="node_command", metavar="SUBCOMMAND")

    status = nsub.add_parser(
        "status",
        parents=[common],
        help="show nodes' push jobs availability (knife node status)",
        description="Print NAME<TAB>AVAILABILITY (available/unavailable) for every node of "
        "the organization (the server's online nodes, and the other node records as "
        "unavailable: knife lists only the online ones), or for the named nodes (one GET "
        "each). An argument containing ':' is a "
        "node search query (e.g. 'role:web'); its nodes are listed. -F json prints the "
        "server's objects instead. Exit 0; 1 when a named node does not exist in the "
        "organization (said on stderr, the others printed); 100 on a server error (e.g. an "
        "unknown org).",
    )
    status.add_argument("nodes", nargs="*", metavar="NODE", help="node names or search queries")
    status.set_defaults(func=run_status)

    lst = nsub.add_parser(
        "list",
        parents=[common],
        help="list node names (from the node records or a search)",
        description="Print the organization's node names (Chef node records), one per line, "
        "sorted; with --search only the nodes matching the query (every result page). "
        "-F json prints a JSON list.",
    )
    lst.add_argument(
        "-s", "--search", metavar="QUERY", help="Solr-style node search query, e.g. 'role:web'"
    )
    lst.set_defaults(func=run_list)
