"""``pushy raw``: one Chef-signed HTTP request from the command line (knife raw's job).

It signs with the same credentials as every other operator command (flags, ``PUSHY_*``,
knife.rb / config.rb, ``~/.chef/credentials`` and ``--profile``: ``knife.credentials``) and
its errors take the same exit codes (``knife.cli.EXIT_CODES``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from appliance.core.httptext import http_error
from appliance.knife.credentials import connect
from appliance.knife.session import CliError

EXIT_OK, EXIT_HTTP_ERROR, EXIT_USAGE = 0, 1, 2

DESCRIPTION = (
    "Send one signed request and print the response body (JSON pretty-printed). PATH is "
    "absolute from the server's root (/organizations/ORG/nodes, /users, /pushy/_status) or, "
    "without a leading '/', relative to the organization as in knife raw (nodes → "
    "/organizations/ORG/nodes). Signs with the same credentials as the other commands. Exit 0 "
    "on a 2xx answer, 1 on an HTTP error answer (said on stderr with the body), 2 on a bad "
    "command line or request body, 100 when the server cannot be reached or the credentials "
    "are unusable."
)


def add_parser(sub: argparse._SubParsersAction, connection: argparse.ArgumentParser) -> None:
    raw = sub.add_parser(
        "raw",
        parents=[connection],
        help="send one Chef-signed request to the server (like knife raw)",
        description=DESCRIPTION,
    )
    raw.add_argument("path", metavar="PATH", help="request path, e.g. /organizations or nodes")
    raw.add_argument("-m", "--method", default="GET", help="HTTP method (default GET)")
    raw.add_argument("-d", "--data", help="JSON request body")
    raw.add_argument("-i", "--input", type=Path, help="read the JSON request body from a file")
    raw.add_argument("--accept", default="application/json", help="Accept header")
    raw.set_defaults(operator=True, func=run_raw)


def request_body(args: argparse.Namespace) -> bytes:
    """The body from ``-i`` or ``-d``, checked to be JSON (a usage error otherwise)."""
    body = b""
    if args.input is not None:
        try:
            body = args.input.read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read {args.input}: {exc.strerror}", EXIT_USAGE) from None
    elif args.data is not None:
        body = args.data.encode("utf-8")
    if body:
        try:
            json.loads(body)
        except ValueError as exc:
            raise CliError(f"the request body is not valid JSON: {exc}", EXIT_USAGE) from None
    return body


def run_raw(args: argparse.Namespace) -> int:
    body = request_body(args)
    api = connect(args)
    path = args.path if args.path.startswith("/") else api.org_path(args.path)
    reply = api.request_bytes(args.method.upper(), path, body, accept=args.accept)
    if 200 <= reply.status < 300:
        _print(reply.data, reply.content_type, sys.stdout)
        return EXIT_OK
    print(f"ERROR: {http_error(reply.status, reply.body())}", file=sys.stderr)
    _print(reply.data, reply.content_type, sys.stderr)
    return EXIT_HTTP_ERROR


def _print(data: bytes, content_type: str, stream: TextIO) -> None:
    if content_type == "application/json":
        try:
            stream.write(json.dumps(json.loads(data), indent=2, sort_keys=True) + "\n")
            stream.flush()
            return
        except ValueError:
            pass
    stream.flush()
    if hasattr(stream, "buffer"):
        stream.buffer.write(data)
        stream.buffer.flush()
    else:
        stream.write(data.decode("utf-8", "replace"))
