"""The web dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright):
the real server, real ``pushy client`` nodes, a log-in link made by the real ``pushy admin``
command. The journey an operator takes: log in, watch nodes come online, search them, start a
job from the form and watch its output stream in, abort a long job; a reader sees no start or
abort control and the server refuses a reader's write all the same; log-out ends the session.

The cookie and CSRF rules in detail are tested over plain HTTP in test_dashboard_auth.py.
Set ``PUSHY_SCREENSHOT_DIR`` (scripts/dashboard-screenshots sets docs/img) to keep the
screenshots of the main pages.

Playwright's sync API runs in a thread of its own, so these are plain (not trio) tests.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ClientFleet, Server, new_user, pushy_as_pivotal, set_group

pytest.importorskip("playwright")
from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# no network here: without these Chromium tries to reach Google's services
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000  # every wait of a page is bounded by this
ORG = "web"
WHITELIST = (
    "{'hello'=>'for i in 1 2 3; do echo line $i; sleep 0.2; done', "
    "'long'=>'echo started; sleep 60'}"
)

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no chromium installed")
expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[ClientFleet]:
    work = tmp_path_factory.mktemp("dashboard")
    server = Server(work / "state").start()
    fleet = ClientFleet(server, ORG, work / "clients")
    try:
        for name in ("n1", "n2"):
            fleet.add(name, whitelist=WHITELIST)
        fleet.add("n3", whitelist=WHITELIST, start=False)  # started once the page is open
        admin = fleet.admin
        new_user(admin, "wendy", ORG)
        new_user(admin, "rita", ORG)
        set_group(admin, ORG, "pushy_job_writers", users=["wendy"])
        fleet.wait_available("n1", "n2")
        yield fleet
    finally:
        fleet.close()
        server.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    where = os.environ.get("PUSHY_SCREENSHOT_DIR")
    return Path(where) if where else tmp_path


def login_link(fleet: ClientFleet, user: str) -> str:
    """A link made as an operator makes it: ``pushy admin login-link`` signed as pivotal."""
    done = pushy_as_pivotal(fleet.server, "admin", "login-link", user, "--org", ORG)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def open_page(browser: Browser, url: str) -> Page:
    """A fresh browser profile (no cookie) opening ``url``."""
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.goto(url)
    return page


def node_badge(page: Page, node: str):
    return page.locator(f'#nodes-body tr[data-node="{node}"] .badge')


def post_from_page(page: Page, path: str, csrf: str | None) -> int:
    """A POST the page's own script could send (same origin, the cookie, maybe the token)."""
    return page.evaluate(
        """async ([path, csrf]) => {
            const headers = {"Content-Type": "application/json"};
            if (csrf !== null) headers["X-CSRF-Token"] = csrf;
            const body = JSON.stringify({command: "hello", nodes: ["n1"]});
            const r = await fetch(path, {method: "POST", headers, body});
            return r.status;
        }""",
        [path, csrf],
    )


def csrf_of(page: Page) -> str:
    return page.evaluate(
        "async () => (await (await fetch('/pushy/dashboard/session')).json()).csrf_token"
    )


def test_a_writer_watches_nodes_starts_a_job_sees_its_output_and_aborts_one(fleet, browser, shots):
    url = login_link(fleet, "wendy")
    page = open_page(browser, url)
    expect(page.locator("#who")).to_contain_text("wendy")
    assert "#login=" not in page.url  # the token is gone from the address bar and history
    for node in ("n1", "n2"):
        expect(node_badge(page, node)).to_have_attribute("data-status", "available")
    expect(node_badge(page, "n3")).to_have_count(0)
    fleet.clients["n3"].start()  # a node coming online while the page is open
    fleet.wait_available("n3", seconds=60)
    expect(node_badge(page, "n3")).to_have_attribute("data-status", "available")
    expect(page.locator("#nodes-summary")).to_have_text("3 online, 3 available")
    page.screenshot(path=str(shots / "dashboard-nodes.png"))

    page.fill("#node-query", "name:n2")  # Chef search on the node records the clients publish
    page.click("#node-search button")
    expect(page.locator("#nodes-body tr")).to_have_count(1)
    expect(node_badge(page, "n2")).to_have_attribute("data-status", "available")

    page.click("#nav-start")
    page.fill("#command", "hello")
    page.fill("#nodes-input", "n1, n2")
    page.fill("#max_concurrency", "1")
    expect(page.locator("#capture_output")).to_be_checked()
    page.screenshot(path=str(shots / "dashboard-start.png"))
    page.click("#start-job")
    page.wait_for_url(re.compile(r".*#/jobs/[0-9a-f]{32}$"))
    expect(page.locator("#job-status")).to_have_attribute("data-status", "complete")
    for node in ("n1", "n2"):
        out = page.locator(f'pre[data-node="{node}"][data-stream="stdout"]')
        expect(out).to_have_text("line 1\nline 2\nline 3\n")
        row = page.locator(f'#job-nodes tr[data-node="{node}"]')
        expect(row.locator(".badge")).to_have_attribute("data-status", "succeeded")
        expect(row).to_contain_text("exit 0")
    expect(page.locator("#abort")).to_be_hidden()  # a finished job
    page.screenshot(path=str(shots / "dashboard-job.png"), full_page=True)

    page.click("#nav-start")
    page.fill("#command", "long")
    page.fill("#nodes-input", "n3")
    page.click("#start-job")
    page.wait_for_url(re.compile(r".*#/jobs/[0-9a-f]{32}$"))
    job_id = page.url.rsplit("/", 1)[1]
    # printed by the running command: only live output can show it before the job ends
    expect(page.locator('pre[data-node="n3"][data-stream="stdout"]')).to_have_text("started\n")
    expect(page.locator("#job-status")).to_have_attribute("data-status", "running")
    page.click("#abort")
    expect(page.locator("#job-status")).to_have_attribute("data-status", "aborted")
    assert fleet.job(job_id)["status"] == "aborted"
    expect(page.locator("#abort")).to_be_hidden()

    page.click("#nav a[data-page=jobs]")
    expect(page.locator(f'#jobs-body tr[data-job="{job_id}"] .badge')).to_have_attribute(
        "data-status", "aborted"
    )
    assert post_from_page(page, f"/organizations/{ORG}/pushy/jobs", None) == 403  # no token

    page.click("#logout")
    expect(page.locator("#login")).to_contain_text("You have logged out")
    status = page.evaluate(f"async () => (await fetch('/organizations/{ORG}/pushy/jobs')).status")
    assert status in (400, 401)  # the cookie was cleared; the server ended the session too
    page.goto(url)  # the same link again: it worked once
    expect(page.locator("#login")).to_contain_text("cannot be used")
    page.context.close()


def test_a_reader_sees_jobs_but_no_control_and_its_writes_are_refused(fleet, browser):
    live = fleet.post("long", ["n1"], capture_output=True)  # a writer would see its abort button
    page = open_page(browser, login_link(fleet, "rita"))
    try:
        expect(page.locator("#who")).to_contain_text("read only")
        expect(page.locator("#nav-start")).to_be_hidden()
        page.click("#nav a[data-page=jobs]")
        page.click(f'#jobs-body tr[data-job="{live}"] a')
        expect(page.locator('pre[data-node="n1"][data-stream="stdout"]')).to_have_text("started\n")
        expect(page.locator("#job-status")).to_have_attribute("data-status", "running")
        expect(page.locator("#abort")).to_be_hidden()
        page.goto(page.url.split("#")[0] + "#/start")
        expect(page.locator("#main")).to_contain_text("not start jobs")
        expect(page.locator("#start-form")).to_have_count(0)
        # the server refuses what the page hides: a forged start and abort with a valid token
        csrf = csrf_of(page)
        assert post_from_page(page, f"/organizations/{ORG}/pushy/jobs", csrf) == 403
        assert post_from_page(page, f"/organizations/{ORG}/pushy/jobs/{live}/abort", csrf) == 403
        assert fleet.job(live)["status"] == "running"
    finally:
        page.context.close()
        fleet.admin.post(f"/organizations/{ORG}/pushy/jobs/{live}/abort")
        fleet.wait_available("n1")  # ready for the next test, whatever the order
