"""The web dashboard's log-in and its cookie rules against the real server, over plain HTTP.

A one-time link (the real ``pushy admin login-link``, or its API) becomes a session cookie;
the cookie is accepted by the dashboard's routes as its user, with the same permissions as a
signed request, CSRF token and Origin on every write, and nothing changes for signed
requests. The browser journey is tests/e2e/test_dashboard.py.
"""

from __future__ import annotations

import json
import time
from http.cookies import SimpleCookie

import httpx
import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from tests.support import (
    Chef,
    error_of,
    new_user,
    pushy_as_pivotal,
    server_fixture,
    set_group,
    setup_org,
)

server = server_fixture("dashboard-auth")
ORG = "dash"
JOBS = f"/organizations/{ORG}/pushy/jobs"
SESSION = "/pushy/dashboard/session"
LINKS = "/pushy/dashboard/login_links"


@pytest.fixture(scope="module")
def users(server) -> dict[str, Chef]:
    """pivotal, a writer, a reader, and an outsider (member of another org only)."""
    admin, _ = setup_org(server, ORG, ())
    setup_org(server, "other", ())
    writer, reader = new_user(admin, "wendy", ORG), new_user(admin, "rita", ORG)
    outsider = new_user(admin, "otto", "other")
    set_group(admin, ORG, "pushy_job_writers", users=["wendy"])
    set_group(admin, ORG, "pushy_job_readers", users=["wendy", "rita"])
    return {"admin": admin, "writer": writer, "reader": reader, "outsider": outsider}


def link(admin: Chef, user: str, **extra: object) -> str:
    r = admin.post(LINKS, {"user": user, **extra})
    assert r.status_code == 201, r.text
    url = r.json()["url"]
    assert url.startswith(f"{admin.base_url}/#login=")
    return url.split("#login=", 1)[1]


class Browser:
    """What a browser does with the dashboard: a cookie jar, Origin on writes, the CSRF token."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=30)
        self.csrf = ""

    def login(self, token: str, origin: str | None = None) -> httpx.Response:
        r = self.http.post(
            SESSION, json={"token": token}, headers={"Origin": origin or self.base_url}
        )
        if r.status_code == 200:
            self.csrf = r.json()["csrf_token"]
        return r

    def write(
        self, method: str, path: str, body: object = None, *, csrf: str | None = None, origin=True
    ) -> httpx.Response:
        headers = {"X-CSRF-Token": self.csrf if csrf is None else csrf}
        if origin is True:
            headers["Origin"] = self.base_url
        elif origin:
            headers["Origin"] = origin
        return self.http.request(method, path, json=body, headers=headers)


def logged_in(server, admin: Chef, user: str) -> Browser:
    browser = Browser(server.url)
    r = browser.login(link(admin, user, org=ORG))
    assert r.status_code == 200, r.text
    return browser


# --------------------------------------------------------------------------------- the link


def test_a_link_opens_a_session_with_a_strict_http_only_cookie(server, users):
    browser = Browser(server.url)
    r = browser.login(link(users["admin"], "wendy", org=ORG))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"] == "wendy" and body["org"] == ORG
    assert body["can_read"] is True and body["can_write"] is True
    assert r.headers["Cache-Control"] == "no-store"
    cookie = SimpleCookie(r.headers["set-cookie"])["pushy_session"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/"
    assert cookie["max-age"] == "43200"
    assert not cookie["secure"]  # plain HTTP: a Secure cookie would never come back
    token = cookie.value
    assert token not in r.text and len(token) >= 40
    r = browser.http.get(SESSION)
    assert r.status_code == 200 and r.json()["csrf_token"] == browser.csrf


def test_over_https_the_cookie_is_secure(server, users):
    token = link(users["admin"], "rita", org=ORG)
    https = server.url.replace("http://", "https://")
    r = httpx.post(
        f"{server.url}{SESSION}",
        json={"token": token},
        headers={"Origin": https, "X-Forwarded-Proto": "https"},
    )
    assert r.status_code == 200, r.text
    assert SimpleCookie(r.headers["set-cookie"])["pushy_session"]["secure"] is True


def test_a_link_works_once(server, users):
    token = link(users["admin"], "rita", org=ORG)
    assert Browser(server.url).login(token).status_code == 200
    again = Browser(server.url).login(token)
    assert again.status_code == 401
    assert "unknown, used or expired" in error_of(again)[0]
    assert "set-cookie" not in again.headers


def test_an_expired_link_is_refused(server, users):
    token = link(users["admin"], "rita", org=ORG, ttl=1)
    deadline = time.time() + 1.5
    while time.time() < deadline:  # past its expiry on the server's clock (the same machine)
        time.sleep(0.1)
    r = Browser(server.url).login(token)
    assert r.status_code == 401
    assert "unknown, used or expired" in error_of(r)[0]


def test_a_cross_site_log_in_is_refused_and_leaves_the_link_unspent(server, users):
    token = link(users["admin"], "rita", org=ORG)
    browser = Browser(server.url)
    assert browser.login(token, origin="https://evil.example").status_code == 403
    r = browser.http.post(SESSION, json={"token": token})  # no Origin at all
    assert r.status_code == 403
    assert browser.login(token).status_code == 200


def test_who_may_make_a_link(server, users):
    admin, reader, outsider = users["admin"], users["reader"], users["outsider"]
    r = reader.post(LINKS, {"user": "rita", "org": ORG})  # a user for itself
    assert r.status_code == 201, r.text
    assert r.json()["user"] == "rita" and r.json()["org"] == ORG
    r = reader.post(LINKS, {"user": "wendy", "org": ORG})  # for someone else: no
    assert r.status_code == 403
    assert admin.post(LINKS, {"user": "nobody"}).status_code == 404
    r = admin.post(LINKS, {"user": "otto", "org": ORG})  # not a member of that org
    assert r.status_code == 400 and "not associated" in error_of(r)[0]
    r = admin.post(LINKS, {"user": "otto"})  # the user's only org by default
    assert r.status_code == 201 and r.json()["org"] == "other"
    for bad in ({"user": "rita", "ttl": 0}, {"user": "rita", "ttl": 3601}, {"user": 3}, {}):
        r = admin.post(LINKS, bad)
        assert r.status_code == 400, (bad, r.text)
    assert outsider.post(LINKS, {"user": "otto"}).status_code == 201
    unsigned = httpx.post(f"{server.url}{LINKS}", json={"user": "rita"})
    assert unsigned.status_code == 400  # missing X-Ops headers: a signed route


# ------------------------------------------------------------------------- the cookie's rules


def test_a_reader_sees_but_cannot_start_or_abort(server, users):
    browser = logged_in(server, users["admin"], "rita")
    assert browser.http.get(SESSION).json()["can_write"] is False
    r = browser.http.get(JOBS)
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    r = browser.write("POST", JOBS, {"command": "chef-client", "nodes": ["n1"]})
    assert r.status_code == 403, r.text
    assert "does not have access" in error_of(r)[0]
    job = users["admin"].post(JOBS, {"command": "chef-client", "nodes": ["n1"]}).json()["id"]
    r = browser.write("POST", f"{JOBS}/{job}/abort")
    assert r.status_code == 403


def test_a_writer_writes_only_with_the_csrf_token_and_its_own_origin(server, users):
    browser = logged_in(server, users["admin"], "wendy")
    body = {"command": "chef-client", "nodes": ["n1"]}
    r = browser.write("POST", JOBS, body, csrf="")
    assert r.status_code == 403 and "X-CSRF-Token" in error_of(r)[0]
    r = browser.write("POST", JOBS, body, csrf="x" * 43)
    assert r.status_code == 403 and "X-CSRF-Token" in error_of(r)[0]
    r = browser.write("POST", JOBS, body, origin="http://evil.example")
    assert r.status_code == 403 and "Origin" in error_of(r)[0]
    r = browser.write("POST", JOBS, body, origin=False)
    assert r.status_code == 403 and "Origin" in error_of(r)[0]
    other = logged_in(server, users["admin"], "wendy")  # another session's token: no
    r = browser.write("POST", JOBS, body, csrf=other.csrf)
    assert r.status_code == 403
    r = browser.write("POST", JOBS, body)
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    r = browser.write("POST", f"{JOBS}/{job}/abort", csrf="")
    assert r.status_code == 403
    r = browser.write("POST", f"{JOBS}/{job}/abort")
    assert r.status_code in (200, 409), r.text  # 409 if it already failed its quorum


def test_the_cookie_is_for_the_dashboards_routes_only(server, users):
    browser = logged_in(server, users["admin"], "wendy")
    r = browser.http.get(f"/organizations/{ORG}/search/node", params={"q": "*:*"})
    assert r.status_code == 200, r.text
    r = browser.http.get(f"/organizations/{ORG}/pushy/node_states")
    assert r.status_code == 200
    for path in (
        f"/organizations/{ORG}/clients",
        f"/organizations/{ORG}/pushy/config/n1",
        "/users",
    ):
        r = browser.http.get(path, params={"ccpk": "x"})
        assert r.status_code == 400, (path, r.text)  # signed routes: X-Ops headers missing
    r = browser.http.get("/organizations/other/pushy/jobs")
    assert r.status_code == 403  # wendy is no member of "other"


def test_signed_requests_are_unchanged_by_a_cookie(server, users):
    admin = users["admin"]
    plain = admin.get(JOBS)
    assert plain.status_code == 200
    assert "no-store" not in plain.headers.get("Cache-Control", "")
    with_cookie = admin.get(JOBS, headers={"Cookie": "pushy_session=forged"})
    assert with_cookie.status_code == 200
    assert with_cookie.json() == admin.get(JOBS).json()
    assert "no-store" not in with_cookie.headers.get("Cache-Control", "")
    forged = httpx.get(f"{server.url}{JOBS}", headers={"Cookie": "pushy_session=forged"})
    assert forged.status_code == 401 and "log in again" in error_of(forged)[0]


def test_log_out_ends_the_session_on_the_server(server, users):
    browser = logged_in(server, users["admin"], "wendy")
    cookie = browser.http.cookies["pushy_session"]
    assert browser.write("DELETE", SESSION, csrf="").status_code == 403
    r = browser.write("DELETE", SESSION)
    assert r.status_code == 200, r.text
    assert SimpleCookie(r.headers["set-cookie"])["pushy_session"]["max-age"] == "0"
    replay = httpx.get(f"{server.url}{JOBS}", cookies={"pushy_session": cookie})
    assert replay.status_code == 401  # the old cookie is dead, not merely forgotten
    assert httpx.get(f"{server.url}{SESSION}", cookies={"pushy_session": cookie}).status_code == 401


async def test_the_websocket_takes_the_cookie_from_its_own_origin_only(server, users):
    browser = await trio.to_thread.run_sync(logged_in, server, users["admin"], "rita")
    cookie = browser.http.cookies["pushy_session"]
    url = server.url.replace("http://", "ws://") + f"/organizations/{ORG}/pushy/ws"
    good = [(b"Cookie", f"pushy_session={cookie}".encode()), (b"Origin", server.url.encode())]
    with trio.fail_after(20):
        async with open_websocket_url(url, extra_headers=good) as ws:
            hello = json.loads(await ws.get_message())
            assert hello["type"] == "hello" and hello["org"] == ORG
        for origin in (b"http://evil.example", None):
            headers = [good[0]] + ([(b"Origin", origin)] if origin else [])
            with pytest.raises(ConnectionRejected) as caught:
                async with open_websocket_url(url, extra_headers=headers):
                    pass
            assert caught.value.status_code == 403


# ------------------------------------------------------------------------- the page, the CLI


def test_the_page_forbids_inline_scripts_and_framing(server):
    r = httpx.get(f"{server.url}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp and r.headers["X-Frame-Options"] == "DENY"
    assert '<script src="/dashboard/app.js"' in r.text and "<script>" not in r.text
    for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css")):
        r = httpx.get(f"{server.url}/dashboard/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype)
    for name in ("nope.js", "..%2Fapp.py", "__init__.py"):
        assert httpx.get(f"{server.url}/dashboard/{name}").status_code == 404


def test_the_admin_command_prints_a_link_that_logs_in(server, users):
    done = pushy_as_pivotal(server, "admin", "login-link", "rita", "--org", ORG, "--ttl", "120")
    assert done.returncode == 0, done.stderr
    url = done.stdout.strip()
    assert url.startswith(f"{server.url}/#login=") and "\n" not in url
    assert "rita" in done.stderr and ORG in done.stderr
    browser = Browser(server.url)
    r = browser.login(url.split("#login=", 1)[1])
    assert r.status_code == 200 and r.json()["user"] == "rita"
    done = pushy_as_pivotal(server, "admin", "login-link", "rita", "--org", ORG, "-F", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["url"].startswith(f"{server.url}/#login=")
    done = pushy_as_pivotal(server, "admin", "login-link", "rita", "--ttl", "0")
    assert done.returncode == 100 and "--ttl" in done.stderr
    done = pushy_as_pivotal(server, "admin", "login-link", "nobody", "--org", ORG)
    assert done.returncode == 100 and "nobody" in done.stderr


def test_no_token_reaches_the_server_log(server, users):
    """Links, session cookies and CSRF tokens are credentials: the log names users only."""
    token = link(users["admin"], "wendy", org=ORG)
    browser = Browser(server.url)
    assert browser.login(token).status_code == 200
    cookie = browser.http.cookies["pushy_session"]
    assert (
        browser.write("POST", JOBS, {"command": "chef-client", "nodes": ["n9"]}).status_code == 201
    )
    assert browser.write("DELETE", SESSION).status_code == 200
    assert Browser(server.url).login(token).status_code == 401  # a refused reuse is logged too
    log = server.log()
    assert "dashboard session opened for wendy" in log  # the log does say what happened
    assert "dashboard session of wendy (org dash) closed" in log
    for secret in (token, cookie, browser.csrf):
        assert secret not in log
