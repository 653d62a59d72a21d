"""``pushy raw``: one Chef-signed HTTP request from the command line (knife raw's job)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from appliance.core import chefauth
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
    headers = chefauth.sign_request(
        key=key,
        user_id=args.user,
        method=method,
        path=path.split("?", 1)[0],
        body=body,
        timestamp=chefauth.format_timestamp(time.time()),
    )
    headers["Accept"] = args.accept
    if body:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(
        args.server_url.rstrip("/") + path, data=body or None, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            _print(response.read(), response.headers.get_content_type())
            return EXIT_OK
    except urllib.error.HTTPError as exc:
        print(f"pushy raw: {exc.code} {exc.reason}", file=sys.stderr)
        _print(exc.read(), exc.headers.get_content_type(), stream=sys.stderr)
        return EXIT_HTTP_ERROR
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"pushy raw: cannot reach {args.server_url}: {reason}", file=sys.stderr)
        return EXIT_UNREACHABLE


def signed_request(
    url: str,
    method: str,
    path: str,
    body: Any,
    user: str,
    key_pem: str,
    *,
    accept: str = "application/json",
    timeout: float = 30.0,
) -> tuple[int, Any]:
    """One signed request; returns (status, parsed JSON or text). Raises OSError if unreachable."""
    raw = b"" if body is None else json.dumps(body).encode("utf-8")
    headers = chefauth.sign_request(
        key=load_private_pem(key_pem),
        user_id=user,
        method=method,
        path=path.split("?", 1)[0],
        body=raw,
        timestamp=chefauth.format_timestamp(time.time()),
    )
    headers["Accept"] = accept
    if raw:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url + path, data=raw or None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, data, ctype = (
                response.status,
                response.read(),
                response.headers.get_content_type(),
            )
    except urllib.error.HTTPError as exc:
        status, data, ctype = exc.code, exc.read(), exc.headers.get_content_type()
    if ctype == "application/json":
        return status, json.loads(data)
    return status, data.decode("utf-8", "replace")


def _print(data: bytes, content_type: str, stream=sys.stdout) -> None:
    if content_type == "application/json":
        try:
            stream.write(json.dumps(json.loads(data), indent=2, sort_keys=True) + "\n")
            return
        except ValueError:
            pass
    stream.buffer.write(data) if hasattr(stream, "buffer") else stream.write(data.decode())
    stream.flush()
