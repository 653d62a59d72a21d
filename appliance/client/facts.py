"""The node's record for node search: automatic attributes (as Ohai names them) + config.

The client publishes it at start (PUT, or POST when the node record does not exist yet). A
server without the nodes API (an original push jobs server behind a Chef server that refuses)
is not an error: the client logs it and carries on.
"""

from __future__ import annotations

import platform
import socket
from typing import Any
from urllib.parse import urlsplit


def automatic_attributes(server_url: str) -> dict[str, Any]:
    uname = platform.uname()
    try:
        release = platform.freedesktop_os_release()
    except OSError:
        release = {}
    return {
        "hostname": socket.gethostname().split(".")[0],
        "fqdn": socket.getfqdn(),
        "platform": release.get("ID", uname.system.lower()),
        "platform_version": release.get("VERSION_ID", uname.release),
        "platform_family": release.get("ID_LIKE", release.get("ID", "")).split(" ")[0],
        "os": uname.system.lower(),
        "kernel": {"name": uname.system, "release": uname.release, "machine": uname.machine},
        "ipaddress": _address_towards(server_url),
    }


def node_record(
    name: str,
    automatic: dict[str, Any],
    *,
    attributes: dict[str, Any] | None = None,
    environment: str = "_default",
    tags: tuple[str, ...] = (),
    roles: tuple[str, ...] = (),
) -> dict[str, Any]:
    normal = dict(attributes or {})
    if tags:
        normal["tags"] = list(tags)
    return {
        "name": name,
        "chef_type": "node",
        "json_class": "Chef::Node",
        "chef_environment": environment,
        "run_list": [f"role[{role}]" for role in roles],
        "automatic": automatic,
        "normal": normal,
    }


def _address_towards(server_url: str) -> str | None:
    """The local address this node uses to reach the server (no packet is sent)."""
    host = urlsplit(server_url).hostname or "127.0.0.1"
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))
            return probe.getsockname()[0]
    except OSError:
        return None
