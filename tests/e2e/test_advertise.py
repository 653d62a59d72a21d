"""The advertised address against the real server process: a ``server_name`` that does not
resolve is reported at start (a WARNING line in the log, ``; WARNING: ...`` in the STATUS
sent to ``$NOTIFY_SOCKET``, ``advertised`` in ``/pushy/_status``), and a reload (SIGHUP) with
a working name clears it and changes what new configs and job commits carry.

``nosuchhost.invalid`` never resolves (RFC 6761 reserves ``.invalid``); where no resolver
answers in time the server says so and the verdict is the same. The notify socket is a
datagram socket in a temporary directory (no network bind).
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.helpers import post_job
from tests.e2e.test_systemd import LogTail, NotifySocket, field, hup, write_config
from tests.support import Server, WireNode, setup_org

BAD = "nosuchhost.invalid"


def test_unresolvable_server_name_is_reported_then_fixed_by_a_reload(tmp_path: Path):
    notify = NotifySocket(tmp_path)
    srv = Server(tmp_path / "state", env=notify.env, server_name=BAD)
    try:
        with srv:
            # (a) at start: the log, the STATUS line, /pushy/_status
            ready = notify.wait("READY=1")
            status = field(notify.messages()[ready], "STATUS") or ""
            assert status.endswith(
                f"; WARNING: server_name '{BAD}' does not resolve (see /pushy/_status)"
            ), status
            warnings = [line for line in srv.log().splitlines() if "WARNING" in line]
            assert any(
                f"server_name '{BAD}' does not resolve on this host" in w for w in warnings
            ), srv.log()
            cmd, hb = srv.ports["command_port"], srv.ports["server_heartbeat_port"]
            advertised = srv.status()["advertised"]
            problem = advertised.pop("problem")
            assert advertised == {
                "server_name": BAD,
                "addresses": [],
                "status": "unresolved",
                "command_addr": f"tcp://{BAD}:{cmd}",
                "heartbeat_addr": f"tcp://{BAD}:{hb}",
            }
            assert f"'{BAD}'" in problem and "systemctl reload pushy-server" in problem, problem
            admin, keys = setup_org(srv, "adv", ("n1",))
            node = WireNode(srv, "adv", "n1", keys["n1"])
            assert node.fetch_config().status_code == 200
            assert node.config["host"] == BAD
            assert node.config["push_jobs"]["heartbeat"]["command_addr"] == f"tcp://{BAD}:{cmd}"

            # (b) a reload with an explicit loopback literal: ok, and new configs carry it
            log = LogTail(srv)
            mark = len(notify.messages())
            srv.settings["server_name"] = "127.0.0.1"
            write_config(srv)
            hup(srv)
            ready = notify.wait("READY=1", after=notify.wait("RELOADING=1", after=mark))
            # (c) the STATUS line no longer warns
            assert "WARNING" not in (field(notify.messages()[ready], "STATUS") or "")
            text = log.wait("nodes are told to connect to")
            assert "reload: applied server_name = '127.0.0.1'" in text, text
            assert f"tcp://127.0.0.1:{cmd} and tcp://127.0.0.1:{hb}" in text, text
            assert srv.status()["advertised"] == {
                "server_name": "127.0.0.1",
                "addresses": ["127.0.0.1"],
                "status": "ok",
                "problem": None,
                "command_addr": f"tcp://127.0.0.1:{cmd}",
                "heartbeat_addr": f"tcp://127.0.0.1:{hb}",
            }
            assert node.fetch_config().status_code == 200
            assert node.config["host"] == "127.0.0.1"
            heartbeat = node.config["push_jobs"]["heartbeat"]
            assert heartbeat["out_addr"] == f"tcp://127.0.0.1:{hb}"
            # ... and so does a job's commit (the node connects with the new config)
            node.connect()
            node.join()
            post_job(admin, "adv", ["n1"])
            commit = node.recv(10, types=("commit",))
            assert commit is not None and commit["server"] == "127.0.0.1", commit
            node.close()
    finally:
        notify.close()
