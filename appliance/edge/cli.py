"""``pushy edge`` (run an edge) and ``pushy edge-key`` (let a remote edge in)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

import zmq

from appliance import logformat

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def add_parsers(sub: argparse._SubParsersAction) -> None:
    edge = sub.add_parser(
        "edge",
        help="hold node sockets for a pushy server (on another host)",
        description="Serve nodes for a pushy server running in edge mode: the ZeroMQ command "
        "and heartbeat ports, CURVE, message checks and node liveness, forwarding to the "
        "server only what it needs. The server starts its local edges itself; run this on "
        "another host with the credentials file 'pushy edge-key' wrote there. Exit statuses: "
        "0 stopped, 1 runtime failure, 2 bad command line or credentials.",
    )
    edge.add_argument(
        "--coordinator",
        required=True,
        help="the server's edge link, tcp://HOST:PORT (its edge_link_address/edge_link_port)",
    )
    edge.add_argument("--credentials", type=Path, help="the file 'pushy edge-key' wrote")
    edge.add_argument("--name", help="this edge's name (default: the credentials' name)")
    edge.add_argument(
        "--listen",
        default="tcp://*",
        help="where nodes connect: tcp://ADDRESS (default tcp://*)",
    )
    edge.add_argument("--command-port", type=int, default=10002, help="default 10002")
    edge.add_argument("--heartbeat-port", type=int, default=10000, help="default 10000")
    edge.add_argument(
        "--server-name",
        help="the name or address nodes are told to connect to (default: the --listen "
        "address, or this host's FQDN when it listens on every interface)",
    )
    edge.add_argument("-l", "--log-level", default="info", help="debug, info, warning, error")
    edge.add_argument(
        "--log-format",
        choices=logformat.FORMATS,
        default="text",
        help="text (the default; no timestamp under journald) or json, one object per line",
    )
    edge.add_argument("--local", action="store_true", help=argparse.SUPPRESS)
    key = sub.add_parser(
        "edge-key",
        help="let an edge on another host join this server",
        description="Make a CURVE key pair for a remote edge: its public key goes to "
        "STATE_DIR/edges/NAME.pub (the server allows it in at once), and a credentials file "
        "(mode 0600) for 'pushy edge --credentials' is written. Copy that file to the edge's host.",
    )
    key.add_argument("name", help="the edge's name (letters, digits, - and _)")
    key.add_argument("--state-dir", default="/var/lib/pushy", help="default /var/lib/pushy")
    key.add_argument("-o", "--output", type=Path, help="credentials file (default NAME.edge)")


def run_edge(args: argparse.Namespace) -> int:
    import trio

    from appliance.edge.process import Edge, EdgeOptions, EdgeStopped
    from appliance.server.edgelaunch import ENV_LINK

    logformat.setup(str(args.log_level), args.log_format)
    parent: int | None = None
    if args.local:
        try:
            coordinator_public, public, secret, pid = os.environ.pop(ENV_LINK).split()
            parent = int(pid)
        except (KeyError, ValueError):
            print("pushy edge: --local is only for edges the server starts", file=sys.stderr)
            return EXIT_USAGE
        name = args.name or "local"
    else:
        if args.credentials is None:
            print(
                "pushy edge: --credentials FILE is required (see 'pushy edge-key')", file=sys.stderr
            )
            return EXIT_USAGE
        try:
            creds = json.loads(args.credentials.read_text())
            coordinator_public, public, secret = (
                creds["coordinator_public"],
                creds["public"],
                creds["secret"],
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"pushy edge: cannot use {args.credentials}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        name = args.name or creds.get("name") or "edge"
    opts = EdgeOptions(
        coordinator=args.coordinator,
        name=name,
        coordinator_public=coordinator_public,
        public=public,
        secret=secret,
        local=args.local,
        listen=args.listen,
        command_port=args.command_port,
        heartbeat_port=args.heartbeat_port,
        advertise=args.server_name,
        parent=parent,
    )

    log = logging.getLogger("pushy.edge")

    async def main() -> int:
        try:
            edge = Edge(opts)
        except OSError as exc:  # a remote edge binds its node ports first
            log.error("cannot serve nodes: %s", exc)
            return EXIT_FAILURE
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
            try:
                await edge.run()
            except EdgeStopped as exc:
                log.warning("%s; stopping", exc)
            except OSError as exc:
                log.error("cannot serve nodes: %s", exc)
                return EXIT_FAILURE
            finally:
                nursery.cancel_scope.cancel()
        return EXIT_OK

    return trio.run(main)


async def _stop_on_signal(scope) -> None:  # noqa: ANN001
    import trio

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return


def run_edge_key(args: argparse.Namespace) -> int:
    from appliance.server.edgelaunch import LINK_KEY_FILE, link_keypair
    from appliance.server.edges import EDGE_KEYS_DIR

    name = args.name
    if not name or not all(c.isalnum() or c in "-_" for c in name) or len(name) > 64:
        print("pushy edge-key: NAME is 1 to 64 letters, digits, - and _", file=sys.stderr)
        return EXIT_USAGE
    if name.startswith("local-"):
        print("pushy edge-key: names local-N are the server's own edges", file=sys.stderr)
        return EXIT_USAGE
    state_dir = Path(args.state_dir)
    if not state_dir.is_dir():
        print(f"pushy edge-key: {state_dir} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    output = args.output or Path(f"{name}.edge")
    coordinator_public, _ = link_keypair(state_dir)
    kept = state_dir / LINK_KEY_FILE
    if not kept.exists() or coordinator_public not in kept.read_text():
        print(f"pushy edge-key: cannot keep the link key in {kept}", file=sys.stderr)
        return EXIT_FAILURE
    public, secret = (k.decode("ascii") for k in zmq.curve_keypair())
    creds = {
        "name": name,
        "coordinator_public": coordinator_public,
        "public": public,
        "secret": secret,
    }
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"pushy edge-key: {output} exists; not overwritten", file=sys.stderr)
        return EXIT_FAILURE
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f, indent=2)
        f.write("\n")
    keys_dir = state_dir / EDGE_KEYS_DIR
    keys_dir.mkdir(mode=0o700, exist_ok=True)
    (keys_dir / f"{name}.pub").write_text(public + "\n")
    print(
        f"edge {name}: credentials in {output} (copy it to the edge's host); allowed in by "
        f"{keys_dir / (name + '.pub')}"
    )
    return EXIT_OK
