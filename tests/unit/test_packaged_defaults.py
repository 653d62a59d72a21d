"""The packaged settings file and client example agree with the code (the check build-deb runs;
here too, so that a new setting's packaged line fails the tests, not the packaging step)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEBIAN = REPO / "packaging" / "debian"


def _check_defaults():
    spec = importlib.util.spec_from_file_location("check_defaults", DEBIAN / "check_defaults.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_packaged_settings_are_the_defaults_and_the_client_example_loads(capsys):
    check = _check_defaults()
    status = check.main(str(DEBIAN / "pushy-server.toml"), str(DEBIAN / "push-jobs-client.rb"))
    assert status == 0, capsys.readouterr().err


def test_a_packaged_value_that_is_not_the_default_is_caught(tmp_path, capsys):
    text = (DEBIAN / "pushy-server.toml").read_text()
    assert '#log_format = "text"' in text
    changed = tmp_path / "pushy-server.toml"
    changed.write_text(text.replace('#log_format = "text"', '#log_format = "json"'))
    check = _check_defaults()
    assert check.main(str(changed), str(DEBIAN / "push-jobs-client.rb")) == 1
    assert "not the defaults" in capsys.readouterr().err
