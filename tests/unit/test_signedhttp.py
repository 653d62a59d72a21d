"""The one signed HTTP client (``appliance.signedhttp``): signing, replies, errors, streams,
and connections kept alive between requests."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from appliance import signedhttp
from appliance.core import chefauth
from appliance.core.keys import generate_rsa
from appliance.signedhttp import (
    HttpError,
    Presigner,
    SignedClient,
    Stream,
    Unreachable,
    content_type,
)
from appliance.sse import SseEvent, SseParser

KEY = generate_rsa()


def mock(handler: Any, base: str = "http://server:8080") -> tuple[SignedClient, list]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return SignedClient(base, transport=httpx.MockTransport(record)), seen


def test_a_request_is_signed_for_its_whole_path_and_typed() -> None:
    api, seen = mock(lambda r: httpx.Response(201, json={"id": "j"}), "http://server:8080/p/")
    reply = api.send("POST", "/organizations/o/pushy/jobs?x=1", b'{"a":1}', "alice", KEY)
    assert (reply.status, reply.content_type, reply.body()) == (
        201,
        "application/json",
        {"id": "j"},
    )
    request = seen[0]
    assert str(request.url) == "http://server:8080/p/organizations/o/pushy/jobs?x=1"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Accept-Encoding"] == "identity"
    signed = chefauth.parse_auth_headers(
        request.headers, "POST", "/p/organizations/o/pushy/jobs", request.content
    )
    assert signed.user_id == "alice" and signed.content_hash_ok
    assert chefauth.verify_signature(signed, [KEY.public_key()])


def test_get_has_no_body_nor_content_type() -> None:
    api, seen = mock(lambda r: httpx.Response(200, text="hi"))
    reply = api.send("GET", "/x", b"", "u", KEY, accept="text/plain", headers={"X-A": "1"})
    assert reply.body() == "hi" and reply.content_type == "text/plain"
    assert "Content-Type" not in seen[0].headers and seen[0].content == b""
    assert seen[0].headers["Accept"] == "text/plain" and seen[0].headers["X-A"] == "1"


def test_a_presigned_request_is_signed_once_and_sent_again_unchanged() -> None:
    api, seen = mock(lambda r: httpx.Response(200, json={}), "http://server:8080/p/")
    presigned = Presigner(api)
    path = "/organizations/o/pushy/config/n1?ccpk=abc&version=2.0"
    for _ in range(3):
        assert presigned.send("GET", path, "n1", KEY).status == 200
    presigned.send("GET", "/organizations/o/pushy/config/n2", "n2", KEY)
    assert presigned.signatures == 2  # one per (user, method, path), not one per request
    first, again = seen[0], seen[2]
    assert str(first.url) == "http://server:8080/p" + path
    assert first.headers == again.headers  # the same bytes: timestamp and signature kept
    assert first.headers["Accept"] == "application/json" and first.content == b""
    signed = chefauth.parse_auth_headers(
        again.headers, "GET", "/p/organizations/o/pushy/config/n1", b""
    )
    assert signed.user_id == "n1" and chefauth.verify_signature(signed, [KEY.public_key()])


def test_a_presigned_request_older_than_its_max_age_is_signed_anew() -> None:
    api, seen = mock(lambda r: httpx.Response(200, json={}))
    presigned = Presigner(api, max_age=-1.0)  # every kept signature already too old
    presigned.send("GET", "/x", "u", KEY)
    presigned.send("GET", "/x", "u", KEY)
    assert presigned.signatures == 2 and len(seen) == 2


def test_reply_headers_keep_their_case_and_error_statuses_are_replies() -> None:
    api, _ = mock(lambda r: httpx.Response(404, headers={"X-Thing": "1"}, content=b"{bad"))
    reply = api.send("GET", "/x", b"", "u", KEY)
    assert reply.status == 404 and reply.headers["X-Thing"] == "1"
    assert reply.content_type == "text/plain" and reply.body() == "{bad"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "text/plain"),
        ("application/json; charset=utf-8", "application/json"),
        ("Text/Event-Stream", "text/event-stream"),
        ("nonsense", "text/plain"),
    ],
)
def test_content_type_follows_urllib(header: str | None, expected: str) -> None:
    assert content_type(header) == expected


def test_json_raises_http_error_on_an_unexpected_status() -> None:
    api, seen = mock(lambda r: httpx.Response(409, json={"error": "exists"}))
    with pytest.raises(HttpError) as caught:
        api.json("POST", "/organizations", {"name": "o"}, "u", KEY)
    assert caught.value.status == 409 and caught.value.body == {"error": "exists"}
    assert seen[0].content == b'{"name":"o"}'


def test_a_stream_yields_events_and_an_error_status_is_a_reply() -> None:
    body = [b"event: start\nid: job-1\nda", b"ta: {}\n\n:keepalive\n\n"]
    api, seen = mock(lambda r: httpx.Response(200, content=iter(body)))
    stream = api.open_stream("/feed", "u", KEY, headers={"Last-Event-ID": "job-0"})
    assert isinstance(stream, Stream)
    with stream:
        assert list(stream.events(SseParser())) == [SseEvent("start", "job-1", "{}")]
    assert seen[0].headers["Accept"] == "text/event-stream"
    assert seen[0].headers["Last-Event-ID"] == "job-0"
    api, _ = mock(lambda r: httpx.Response(204))
    got = api.open_stream("/feed", "u", KEY)
    assert isinstance(got, signedhttp.Reply) and got.status == 204


def test_an_unreachable_server_reads_as_urllib_did() -> None:
    with socket.socket() as sock:  # bound, not listening: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(Unreachable) as caught:
            signedhttp.send(f"http://127.0.0.1:{port}", "GET", "/x", b"", "u", KEY, timeout=5)
    exc = caught.value
    assert isinstance(exc, OSError) and isinstance(exc.reason, ConnectionRefusedError)
    assert str(exc) == f"<urlopen error {exc.reason}>"
    assert "Connection refused" in str(exc.reason)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    peers: set = set()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.peers.add(self.client_address)
        data = b'{"ok":true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_connections_are_kept_alive_between_requests() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        api = SignedClient(f"http://127.0.0.1:{server.server_address[1]}")
        for _ in range(5):
            assert api.json("GET", "/x", None, "u", KEY) == {"ok": True}
        api.close()
        assert len(_Handler.peers) == 1  # one client port: one connection for five requests
    finally:
        server.shutdown()
        server.server_close()
