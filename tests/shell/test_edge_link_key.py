"""The edge link's key pair file: made once, kept, and never a reason not to start."""

from __future__ import annotations

import pytest

from appliance.server.edgelaunch import LINK_KEY_FILE, link_keypair


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


def test_a_key_that_cannot_be_kept_still_gives_a_key(tmp_path) -> None:
    """A state directory the key cannot be written to (here its temporary file's name is taken
    by a directory: it fails the same way for root) must not stop a start."""
    (tmp_path / (LINK_KEY_FILE + ".tmp")).mkdir()
    public, secret = link_keypair(tmp_path)
    assert len(public) == len(secret) == 40
    assert not (tmp_path / LINK_KEY_FILE).exists()
