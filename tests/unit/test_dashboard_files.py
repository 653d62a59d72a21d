"""The dashboard's files ship wherever the server does: the wheel (package-data) and the single
binary and Debian packages (PyInstaller ``datas``); the page loads nothing from elsewhere."""

from __future__ import annotations

import fnmatch
import re
import tomllib

from appliance.server.dashboard_routes import FILES, STATIC
from tests.support import REPO


def test_every_dashboard_file_is_package_data() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["appliance.server"]
    shipped = {p.name for p in STATIC.iterdir()}
    assert {"index.html", "app.js", "style.css"} <= set(FILES) <= shipped
    for name in shipped:
        assert any(fnmatch.fnmatch(f"dashboard/{name}", g) for g in globs), name


def test_the_single_binary_bundles_the_dashboard() -> None:
    spec = (REPO / "packaging" / "pushy.spec").read_text()
    assert '"appliance", "server", "dashboard"), "appliance/server/dashboard")' in spec


def test_the_page_loads_only_its_own_files() -> None:
    page = FILES["index.html"].decode()
    refs = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert refs and all(r.startswith(("/dashboard/", "#/")) for r in refs), refs
    assert "<script>" not in page and not re.search(r"\son[a-z]+=", page)  # no inline script
    for name in ("app.js", "style.css"):
        text = FILES[name].decode()
        assert "http://" not in text and "https://" not in text, name
