"""The release bookkeeping the upgrade test relies on: one version everywhere, newer than every
release it upgrades from, and a log format that reads theirs."""

from __future__ import annotations

import tomllib

import appliance
from appliance.core import migrations
from tests.support import REPO


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _releases() -> list[tuple[str, str, int]]:
    rows = []
    for line in (REPO / "packaging/releases.tsv").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            version, commit, fmt = line.split("\t")
            rows.append((version, commit, int(fmt)))
    return rows


def test_the_version_is_the_same_in_pyproject_and_the_package() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert appliance.__version__ == project["version"]


def test_every_listed_release_is_older_and_its_log_format_is_readable() -> None:
    releases = _releases()
    assert releases, "packaging/releases.tsv lists no release"
    versions = [_version(v) for v, _, _ in releases]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert versions[-1] < _version(appliance.__version__)
    for version, commit, fmt in releases:
        assert len(commit) == 40 and int(commit, 16) >= 0, version
        assert migrations.readable(fmt), f"{version} writes format {fmt}, which we cannot read"
