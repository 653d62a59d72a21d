"""The ``pushy`` command: one program, subcommands per role (server, client, operator CLI).

Exit statuses scripts can rely on: 0 success, 1 runtime failure (e.g. a corrupt log), 2 a bad
command line or configuration; ``pushy server`` also 3: the state was written by a newer
release (a downgrade), nothing was changed.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance import __version__

if TYPE_CHECKING:
    from appliance.core.settings import Settings
    from appliance.server.edgelaunch import LocalLink

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_NEWER_STATE = 3  # the unit's RestartPreventExitStatus: restarting cannot help


# (label, import name, distribution name) of the libraries a binary bundles
_LIBRARIES = (
    ("trio", "trio", "trio"),
    ("pyzmq", "zmq", "pyzmq"),
    ("cryptography", "cryptography", "cryptography"),
    ("hypercorn", "hypercorn", "hypercorn"),
    ("quart", "quart", "quart"),
    ("quart-trio", "quart_trio", "quart-trio"),
    ("trio-websocket", "trio_websocket", "trio-websocket"),
    ("orjson", "orjson", "orjson"),
    ("rich", "rich", "rich"),
    ("prometheus-client", "prometheus_client", "prometheus-client"),
)


def version_text() -> str:
    """What ``pushy --version`` prints: one line per component, for bug reports."""
    import importlib
    import importlib.metadata
    import platform

    from appliance.core.migrations import FORMAT, OLDEST_FORMAT

    lines = [
        f"pushy {__version__}",
        f"event log format {FORMAT} (reads formats {OLDEST_FORMAT} to {FORMAT})",
        f"Python {platform.python_version()}",
    ]
    for label, module_name, dist in _LIBRARIES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            lines.append(f"{label} not installed")
            continue
        version = getattr(module, "__version__", None)
        if not isinstance(version, str):
            try:
                version = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                version = "unknown"
        extra = ""
        if module_name == "zmq":
            extra = f" (libzmq {module.zmq_version()})"
        elif module_name == "cryptography":
            from cryptography.hazmat.backends.openssl import backend

            extra = f" ({backend.openssl_version_text()})"
        lines.append(f"{label} {version}{extra}")
    if getattr(sys, "frozen", False):
        lines.append(f"frozen: yes (PyInstaller binary {sys.executable})")
    else:
        lines.append(f"frozen: no (Python {sys.executable})")
    return "\n".join(lines)


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        print(version_text())
        parser.exit()


def _add_server(sub: argparse._SubParsersAction, command: str | None) -> None:
    server = sub.add_parser(
        "server",
        help="run the push jobs server",
        description="Run the push jobs server: REST API + SSE on api_port, ZeroMQ command "
        "channel on command_port, server heartbeats on server_heartbeat_port. Exit statuses: 0 "
        "clean stop, 1 runtime failure (e.g. a corrupt event log), 2 bad command line or "
        "settings, 3 the state was written by a newer release of pushy (nothing changed).",
    )
    server.add_argument("-c", "--config", type=Path, help="settings file (TOML, 2.1 key names)")
    server.add_argument("--state-dir", help="state directory (default /var/lib/pushy)")
    server.add_argument(
        "--recover",
        action="store_true",
        help="start even if the event log is corrupt in the middle, keeping only the records "
        "before the damage (the damaged part is reported)",
    )
    server.add_argument(
        "--ready-file",
        type=Path,
        help="write the bound ports as JSON to this file once the server is ready",
    )
    server.add_argument("-l", "--log-level", help="debug, info, warning, error")


def _add_edge(sub: argparse._SubParsersAction, command: str | None) -> None:
    from appliance.edge.cli import add_parsers

    add_parsers(sub)


def _add_client(sub: argparse._SubParsersAction, command: str | None) -> None:
    from appliance.client.cli import add_arguments

    client = sub.add_parser(
        "client",
        help="run the node client (a drop-in for the original push-jobs client)",
        description="Connect this node to the push jobs server and run whitelisted jobs.",
    )
    add_arguments(client)


def _add_demo(sub: argparse._SubParsersAction, command: str | None) -> None:
    from appliance.demo import add_parser

    add_parser(sub)


def _add_bench(sub: argparse._SubParsersAction, command: str | None) -> None:
    from appliance.bench.cli import add_parser

    add_parser(sub)


def _add_operator(sub: argparse._SubParsersAction, command: str | None) -> None:
    from appliance.knife.cli import add_parsers

    add_parsers(sub, command)


def _add_completion(sub: argparse._SubParsersAction, command: str | None) -> None:
    from appliance.completion import add_parser

    add_parser(sub)


# (the commands a group adds, the function adding them: all, or only the one named), in
# ``pushy --help``'s order. A command line naming a command builds only its parser: each
# imports its own stack (the bench and demo pull in the server's, the operator commands
# httpx), and a parser of every command cost a script calling ``pushy job …`` most of a
# second per call.
_GROUPS: tuple[tuple[tuple[str, ...], Any], ...] = (
    (("server",), _add_server),
    (("edge", "edge-key"), _add_edge),
    (("client",), _add_client),
    (("demo",), _add_demo),
    (("bench",), _add_bench),
    (("job", "node", "admin", "watch", "ssl", "raw"), _add_operator),
    (("completion",), _add_completion),
)


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line: only ``command``'s group when it names one (see `_GROUPS`), else
    every command (``pushy --help``, a mistyped command, the completion script)."""
    parser = argparse.ArgumentParser(
        prog="pushy",
        description="Push whitelisted commands to a fleet of nodes (Chef Push Jobs 2.1 compatible).",
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="print the version, the bundled libraries' versions and whether this is a binary",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = [add for names, add in _GROUPS if command in names and command != "completion"]
    if chosen:  # the top level's help is not printed: no epilog
        chosen[0](sub, command)
        return parser
    for _, add in _GROUPS:
        add(sub, None)
    from appliance.knife.cli import EXIT_CODES

    parser.epilog = EXIT_CODES.replace(
        "(every operator command, pushy raw included)",
        "of the operator commands (job, node, admin, watch, raw)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None and Path(sys.argv[0]).name == "pushy-client":
        from appliance.client.cli import client_main

        return client_main()
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["_snapshot"]:  # the server's snapshot builder (a child it starts)
        from appliance.server.snapshots import child_main

        return child_main(words[1:])
    first = next((w for w in words if not w.startswith("-")), None)
    args = _parser(first).parse_args(argv)
    if args.command == "server":
        return _server(args)
    if args.command == "edge":
        from appliance.edge.cli import run_edge

        return run_edge(args)
    if args.command == "edge-key":
        from appliance.edge.cli import run_edge_key

        return run_edge_key(args)
    if args.command == "client":
        from appliance.client.cli import run_client

        return run_client(args)
    if args.command == "demo":
        from appliance.demo import run_demo

        return run_demo(args)
    if args.command == "bench":
        from appliance.bench.cli import run_bench

        return run_bench(args)
    if args.command == "completion":
        from appliance.completion import run_completion

        return run_completion(args, _parser())
    if getattr(args, "operator", False):
        from appliance.knife.cli import dispatch

        return dispatch(args)
    _parser().print_help()
    return EXIT_USAGE


def _server(args: argparse.Namespace) -> int:
    from appliance import logformat
    from appliance.core.settings import SettingsError, load_settings

    data: dict = {}
    if args.config is not None:
        try:
            data = tomllib.loads(args.config.read_text(encoding="utf-8"))
        except OSError as exc:
            print(f"pushy server: cannot read {args.config}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            print(f"pushy server: {args.config} is not valid TOML: {exc}", file=sys.stderr)
            return EXIT_USAGE
    overrides = {
        "state_dir": os.path.abspath(args.state_dir) if args.state_dir else None,
        "log_level": args.log_level,
    }
    try:
        settings, warnings = load_settings(data, overrides)
    except SettingsError as exc:
        where = f"{args.config}: " if args.config else ""
        print(f"pushy server: {where}{exc.message}", file=sys.stderr)
        return EXIT_USAGE
    if settings.api_tls_cert is not None or settings.api_tls_key is not None:
        from appliance.server.tls import TlsSetupError, check_pair

        try:
            warnings += check_pair(settings.api_tls_cert, settings.api_tls_key)
        except TlsSetupError as exc:
            where = f"{args.config}: " if args.config else ""
            print(f"pushy server: {where}{exc}", file=sys.stderr)
            return EXIT_USAGE
    logformat.setup(settings.log_level, settings.log_format)
    log = logging.getLogger("pushy.server")
    for warning in warnings:
        log.warning("%s", warning)
    from appliance.localserver import pushy_command
    from appliance.server.edgelaunch import start_local_link

    # before the web stack is imported and the log replayed: the edges start meanwhile (a
    # PostgreSQL store's server starts as a standby: its edges wait until it is active)
    local = None
    if settings.store_url is None:
        local = start_local_link(settings, [*pushy_command(), "edge"])
    try:
        return _run_server(args, settings, overrides, local)
    finally:
        if local is not None:
            local.close()


def _run_server(
    args: argparse.Namespace,
    settings: Settings,
    overrides: dict[str, Any],
    local: LocalLink | None,
) -> int:
    from appliance.core.migrations import FORMAT

    # The web stack's imports make objects that live as long as the server: a collector
    # walking them meanwhile is a tenth of the start's import time for nothing. It runs again
    # once the replayed state is frozen (``open_store``).
    gc.disable()
    from appliance.server.main import run_server
    from appliance.store.errors import LogCorruption, UnsupportedFormat

    log = logging.getLogger("pushy.server")
    try:
        if settings.store_url is not None:
            try:
                from appliance.server.ha import run_ha
            except ImportError as exc:  # psycopg found no libpq
                log.error(
                    "store = PostgreSQL needs PostgreSQL's client library, libpq (Debian: "
                    "apt-get install libpq5): %s",
                    exc,
                )
                return EXIT_FAILURE
            return run_ha(
                settings, ready_file=args.ready_file, config=args.config, overrides=overrides
            )
        return run_server(
            settings,
            recover=args.recover,
            ready_file=args.ready_file,
            config=args.config,  # re-read on SIGHUP (systemctl reload)
            overrides=overrides,
            local=local,
        )
    except UnsupportedFormat as exc:  # --recover never discards it: no advice to use it
        log.error("%s", exc)
        if exc.found > FORMAT:
            log.error(
                "pushy %s refuses to start rather than misread or lose that state (downgrades "
                "are not supported; nothing was changed): install the release that wrote it, "
                "or a newer one, again",
                __version__,
            )
            return EXIT_NEWER_STATE
        log.error("the header may be damaged; restore a backup of %s", settings.state_dir)
        return EXIT_FAILURE
    except LogCorruption as exc:
        log.error("the event log is corrupt: %s", exc)
        log.error("start with --recover to keep the records before the damage")
        return EXIT_FAILURE
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
    except BaseExceptionGroup as group:
        bind_error = _bind_error(group)
        if bind_error is None:
            raise
        log.error("cannot start: %s (another server on this port?)", bind_error)
        return EXIT_FAILURE


def _bind_error(group: BaseExceptionGroup) -> str | None:
    """A socket that could not be bound, wherever it surfaced in the server's nursery (the
    ZeroMQ reactor raises ZMQError, hypercorn OSError): one line instead of a traceback."""
    import zmq

    match, _ = group.split((OSError, zmq.ZMQError))
    if match is None:
        return None
    leaves: list[BaseException] = []
    stack: list[BaseException] = [match]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return "; ".join(str(leaf) for leaf in leaves)


if __name__ == "__main__":
    sys.exit(main())
