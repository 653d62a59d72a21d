"""The edge link's key pair file: made once, kept, and never a reason not to start."""

from __future__ import annotations

import os

import pytest

from appliance.server.edges import LINK_KEY_FILE, link_keypair


def test_made_once_then_kept(tmp_path) -> None:
    first = link_keypair(tmp_path)
    assert (tmp_path / LINK_KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert link_keypair(tmp_path) == first
    assert all(len(k) == 40 for k in first)


@pytest.mark.parametrize("content", ["", "short\n", "a\nb\nc\n"])
def test_a_damaged_file_is_replaced(tmp_path, content) -> None:
    (tmp_path / LINK_KEY_FILE).write_text(content)
    public, secret = link_keypair(tmp_path)
    assert (tmp_path / LINK_KEY_FILE).read_text().split() == [public, secret]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_read_only_state_dir_still_gives_a_key(tmp_path) -> None:
    tmp_path.chmod(0o500)
    try:
        public, secret = link_keypair(tmp_path)
        assert len(public) == len(secret) == 40
        assert not (tmp_path / LINK_KEY_FILE).exists()
    finally:
        tmp_path.chmod(0o700)
