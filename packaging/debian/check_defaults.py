"""Drift check for the packaged defaults, run by packaging/build-deb with the build venv.

- pushy-server.toml names every server setting exactly once (commented out), and the file
  with every line uncommented loads to the built-in defaults (server_name,
  store_password_file, api_tls_cert and api_tls_key aside: unset by default, shown with an
  example); settings marked
  "Live." are exactly the ones a reload changes.
- the example push-jobs-client.rb loads with the client's own parser.
"""

import re
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

from appliance.client.config import load_config
from appliance.core import settings as server_settings


def main(toml_path: str, client_example: str) -> int:
    text = Path(toml_path).read_text()
    if tomllib.loads(text):
        return fail(f"{toml_path}: every setting must be commented out")
    lines = re.findall(r"^#(\w+ = .*)$", text, re.M)
    data = tomllib.loads("\n".join(lines))
    if len(data) != len(lines):
        return fail(f"{toml_path}: a setting appears twice")
    names = {f.name for f in fields(server_settings.Settings)}
    if set(data) != names:
        return fail(
            f"{toml_path}: missing {sorted(names - set(data))}, unknown {sorted(set(data) - names)}"
        )
    data.pop("server_name")
    data.pop("store_password_file")  # an example path; unset by default
    data.pop("api_tls_cert")  # example paths too: HTTPS is off by default
    data.pop("api_tls_key")
    loaded, _ = server_settings.load_settings(data)
    if loaded != server_settings.Settings():
        return fail(f"{toml_path}: the commented values are not the defaults")
    live_keys = getattr(server_settings, "LIVE_KEYS", None)
    if live_keys is not None:
        marked = set()
        for block in re.split(r"\n(?=# [^-])", text):
            key = re.search(r"^#(\w+) = ", block, re.M)
            if key and re.search(r"\bLive\.", block):
                marked.update(re.findall(r"^#(\w+) = ", block, re.M))
        if marked != set(live_keys):
            return fail(
                f"{toml_path}: 'Live.' marks {sorted(marked ^ set(live_keys))} disagree with "
                "LIVE_KEYS"
            )
    load_config(client_example, {})
    print(f"defaults check: {toml_path} ({len(names)} settings) and {client_example} OK")
    return 0


def fail(message: str) -> int:
    print(f"defaults check FAILED: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
