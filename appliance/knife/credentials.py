"""Where the CLI's server URL, user and key come from.

Precedence: command-line flags, then environment variables, then defaults.
(Provisional: knife.rb / config.rb / ~/.chef/credentials / ~/.pushy/config.toml come next.)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from urllib.parse import urlsplit

from appliance.knife.session import Credentials

DEFAULT_URL = "http://127.0.0.1:10003"


def split_server_url(url: str) -> tuple[str, str | None]:
    """``https://h/organizations/acme`` → (``https://h``, ``acme``)."""
    parts = urlsplit(url.rstrip("/"))
    base = f"{parts.scheme}://{parts.netloc}"
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) >= 2 and segments[-2] == "organizations":
        return base + "/".join([""] + segments[:-2]), segments[-1]
    return base + parts.path, None


def resolve(args: argparse.Namespace) -> Credentials:
    env = os.environ
    url = getattr(args, "server_url", None) or env.get("PUSHY_SERVER_URL") or DEFAULT_URL
    base, org = split_server_url(url)
    org = getattr(args, "org", None) or env.get("PUSHY_ORG") or org
    user = getattr(args, "user", None) or env.get("PUSHY_USER") or "pivotal"
    key = getattr(args, "key", None) or env.get("PUSHY_KEY") or "/var/lib/pushy/pivotal.pem"
    return Credentials(base, org, user, Path(key), "flags and environment")
