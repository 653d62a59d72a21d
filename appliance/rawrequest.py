"""``pushy raw``: one Chef-signed HTTP request from the command line (knife raw's job)."""

from __future__ import annotations

import argparse
import json
import sys

from appliance import signedhttp
from appliance.core.keys import KeyFormatError, load_private_pem

EXIT_OK, EXIT_HTTP_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def run_raw(args: argparse.Namespace) -> int:
    try:
        key = load_private_pem(args.key.read_bytes())
    except OSError as exc:
        print(f"pushy raw: cannot read key {args.key}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except KeyFormatError as exc:
        print(f"pushy raw: {args.key}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    body = b""
    if args.input is not None:
        try:
            body = args.input.read_bytes()
        except OSError as exc:
            print(f"pushy raw: cannot read {args.input}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    elif args.data is not None:
        body = args.data.encode("utf-8")
    if body:
        try:
            json.loads(body)
        except ValueError as exc:
            print(f"pushy raw: the request body is not valid JSON: {exc}", file=sys.stderr)
            return EXIT_USAGE
    method = args.method.upper()
    path = args.path if args.path.startswith("/") else "/" + args.path
    try:
        reply = signedhttp.send(
            args.server_url, method, path, body, args.user, key, accept=args.accept
        )
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        print(f"pushy raw: cannot reach {args.server_url}: {reason}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if 200 <= reply.status < 300:
        _print(reply.data, reply.content_type)
        return EXIT_OK
    print(f"pushy raw: HTTP {reply.status}", file=sys.stderr)
    _print(reply.data, reply.content_type, stream=sys.stderr)
    return EXIT_HTTP_ERROR


def _print(data: bytes, content_type: str, stream=sys.stdout) -> None:
    if content_type == "application/json":
        try:
            stream.write(json.dumps(json.loads(data), indent=2, sort_keys=True) + "\n")
            return
        except ValueError:
            pass
    stream.buffer.write(data) if hasattr(stream, "buffer") else stream.write(data.decode())
    stream.flush()
