"""What the CLI and the client say about an HTTP error (plain text, never a Python repr), and
when the CLI colours (issue 17)."""

from __future__ import annotations

import io

import httpx
import pytest

from appliance.client import fetch
from appliance.core.httptext import error_text, http_error
from appliance.knife import output
from appliance.knife.session import ApiError
from appliance.signedhttp import HttpError, SignedClient
from tests.unit.test_signedhttp import KEY


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, {"error": ["Failed to authenticate as 'bob'. Synchronize the clock."]},
         "HTTP 401 Unauthorized: Failed to authenticate as 'bob'. Synchronize the clock."),
        (404, {"error": "job 'x' not found"}, "HTTP 404 Not Found: job 'x' not found"),
        (400, {"error": ["Field 'name' missing", "Field 'full_name' missing"]},
         "HTTP 400 Bad Request: Field 'name' missing; Field 'full_name' missing"),
        (502, "<html>\n<body>Bad gateway</body>\n</html>\n",
         "HTTP 502 Bad Gateway: <html> <body>Bad gateway</body> </html>"),
        (500, b"", "HTTP 500 Internal Server Error"),
        (500, None, "HTTP 500 Internal Server Error"),
        (599, {"weird": [1, None]}, 'HTTP 599: {"weird": [1, null]}'),
        (400, {"error": [{"field": "x"}, 3]}, 'HTTP 400 Bad Request: {"field": "x"}; 3'),
    ],
)  # fmt: skip
def test_http_error_text(status, body, expected):
    assert http_error(status, body) == expected


def test_a_long_body_is_cut():
    text = error_text("x" * 5000)
    assert len(text) == 500 and text.endswith("…")


def test_every_layer_uses_the_one_formatter():
    body = {"error": ["one", "two"]}
    assert str(ApiError(401, body, "GET", "/p")) == "GET /p: HTTP 401 Unauthorized: one; two"
    assert str(HttpError(400, body)) == "HTTP 400 Bad Request: one; two"
    with pytest.raises(ValueError, match=r"^HTTP 403 Forbidden: one; two$"):
        fetch.connection_from_answer(403, body, KEY, allow_unencrypted=False, node="n")


def test_signed_client_json_error_is_plain_text():
    transport = httpx.MockTransport(lambda r: httpx.Response(404, text="no such thing\n"))
    client = SignedClient("http://server", transport=transport)
    with pytest.raises(HttpError) as caught:
        client.json("GET", "/x", None, "u", KEY)
    assert str(caught.value) == "HTTP 404 Not Found: no such thing"


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_without_no_color(monkeypatch):
    monkeypatch.setattr(output, "_colour_off", False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    job = {"command": "ok", "status": "complete"}
    tty = Tty()
    output.emit(job, "summary", tty)
    assert "\x1b[36mcommand:" in tty.getvalue()
    plain = io.StringIO()
    output.emit(job, "summary", plain)
    assert plain.getvalue() == "command: ok\nstatus:  complete\n"
    monkeypatch.setenv("NO_COLOR", "1")
    tty = Tty()
    output.emit(job, "summary", tty)
    assert tty.getvalue() == plain.getvalue()
    monkeypatch.setenv("NO_COLOR", "")  # set but empty: no-color.org says colour
    assert output.colour_wanted(Tty())
    output.disable_colour()  # --no-color
    tty = Tty()
    output.emit(job, "summary", tty)
    assert tty.getvalue() == plain.getvalue()


def test_the_watch_view_has_no_colour_without_a_colour_terminal(monkeypatch):
    from appliance.knife.watch import live_display, styled

    monkeypatch.setattr(output, "_colour_off", False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    lines = ["pushy watch  acme  (reconnecting…)", "  not available: n1"]
    for colour in (True, False):
        if not colour:
            output.disable_colour()
        out = Tty()
        live = live_display(out)
        live.start()
        live.update(styled(lines), refresh=True)
        live.stop()
        escapes = [p.split("m")[0] for p in out.getvalue().split("\x1b[")[1:] if "m" in p[:8]]
        has_colour = any(code and code[0].isdigit() for code in escapes)
        assert has_colour is colour, out.getvalue()
