"""Does the client's memory stay flat across reconfigures? Prints its RSS as they pile up.

Starts a local server and one ``pushy client``, forces N full reconfigures with SIGUSR1 (each a
config fetch, a new session key, new sockets) and samples the client's RSS.
Usage: .venv/bin/python bench/client_reconnects.py [N]
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from appliance.client.bootstrap import client_config_text
from appliance.localserver import LocalServer
from appliance.rawrequest import signed_request


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    root = Path(tempfile.mkdtemp(prefix="pushy-bench-"))
    server = LocalServer(root / "state", heartbeat_interval=500).start()
    pivotal = server.pivotal_key.read_text()
    signed_request(
        server.url, "POST", "/organizations", {"name": "b", "full_name": "B"}, "pivotal", pivotal
    )
    _, body = signed_request(
        server.url,
        "POST",
        "/organizations/b/clients",
        {"name": "n1", "create_key": True},
        "pivotal",
        pivotal,
    )
    key = root / "n1.pem"
    key.write_text(body["chef_key"]["private_key"])
    config = root / "push-jobs-client.rb"
    config.write_text(
        client_config_text(
            chef_server_url=f"{server.url}/organizations/b",
            node_name="n1",
            client_key=str(key),
            whitelist={"true": "true"},
        )
    )
    log = root / "client.log"
    client = subprocess.Popen(
        [sys.executable, "-m", "appliance", "client", "-c", str(config)],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(3)
        print(f"{'reconfigures':>12} {'client RSS (KiB)':>17}")
        print(f"{0:>12} {rss_kib(client.pid):>17}")
        for i in range(1, count + 1):
            client.send_signal(signal.SIGUSR1)
            time.sleep(0.3)
            if i % max(1, count // 5) == 0:
                print(f"{i:>12} {rss_kib(client.pid):>17}")
        fetches = log.read_text().count("Retrieving configuration")
        print(f"config fetches seen in the client log: {fetches}")
    finally:
        client.terminate()
        client.wait(20)
        server.stop()


if __name__ == "__main__":
    main()
