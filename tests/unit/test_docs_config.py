"""docs/configuration.md and the route index of docs/api.md are what scripts/gen-docs makes
from the code, so a setting, a default, a flag or a route cannot change without the docs."""

from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from appliance.client import settings_table
from appliance.core import settings as server_settings
from appliance.server.app import api_document

REPO = Path(__file__).resolve().parents[2]
RUN = "run scripts/gen-docs and commit the result"


def _load_generator() -> ModuleType:
    path = REPO / "scripts" / "gen-docs"
    loader = importlib.machinery.SourceFileLoader("gen_docs", str(path))
    spec = importlib.util.spec_from_loader("gen_docs", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return _load_generator()


def _rows(text: str, section: str) -> dict[str, list[str]]:
    """key -> cells of the first table after the heading ``section``."""
    lines = text.split(section, 1)[1].splitlines()
    rows: dict[str, list[str]] = {}
    started = False
    for line in lines:
        if line.startswith("| `"):
            started = True
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells
        elif started and not line.startswith("|"):
            break
    return rows


def test_configuration_md_is_up_to_date(gen):
    committed = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == gen.configuration_md(), f"docs/configuration.md is out of date: {RUN}"


def test_api_md_route_index_is_up_to_date(gen):
    committed = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    assert committed == gen.api_md(committed), f"the route index of docs/api.md is stale: {RUN}"


def test_check_mode_reports_nothing_stale(gen, capsys):
    assert gen.main(["--check"]) == 0, capsys.readouterr().out + f"\n{RUN}"


def test_every_server_setting_is_documented_with_its_default():
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = _rows(text, "## Server")
    fields = dataclasses.fields(server_settings.Settings)
    assert set(rows) == {f.name for f in fields}
    for f in fields:
        cells = rows[f.name]
        if isinstance(f.default, int | float) and not isinstance(f.default, bool):
            number = int(f.default) if float(f.default).is_integer() else f.default
            assert cells[2] == f"`{number}`", (f.name, cells)
        elif isinstance(f.default, str):
            assert cells[2] == f'`"{f.default}"`', (f.name, cells)
    live = getattr(server_settings, "LIVE_KEYS", None)
    if live is not None:
        assert {k for k, cells in rows.items() if cells[4] == "live"} == set(live)


def test_every_client_setting_and_flag_is_documented():
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = _rows(text, "### Settings")
    assert set(rows) == set(settings_table.CHECKS)
    client_part = text.split("## Node client", 1)[1]
    for flag in ("--node-name", "--server", "--client_key", "--allow_unencrypted", "-M"):
        assert f"`{flag}`" in client_part


def test_every_route_is_in_the_api_index():
    text = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    for path, item in api_document()["paths"].items():
        for method in item:
            assert f"| {method.upper()} | `{path}` |" in text


def test_a_setting_without_a_meaning_stops_the_generator(gen, monkeypatch):
    meanings = dict(gen.SERVER_MEANINGS)
    del meanings["voting_timeout"]
    monkeypatch.setattr(gen, "SERVER_MEANINGS", meanings)
    with pytest.raises(SystemExit, match="voting_timeout"):
        gen.configuration_md()
    monkeypatch.setattr(gen, "CLIENT_MEANINGS", {**gen.CLIENT_MEANINGS, "no_such_key": "x"})
    monkeypatch.setattr(gen, "SERVER_MEANINGS", {**meanings, "voting_timeout": "x"})
    with pytest.raises(SystemExit, match="no_such_key"):
        gen.configuration_md()
