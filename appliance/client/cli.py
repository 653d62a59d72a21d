"""``pushy client`` (also started as ``pushy-client``): the original client's command line.

Exit statuses: 0 for -v/-h and a clean shutdown; 1 when the server offers no encryption and
``allow_unencrypted`` is off (as the original); 2 for a bad command line or configuration file,
no configuration file at all (the message lists the files searched) or an unreadable client key;
255 when the session key cannot be decrypted with the client key (as the original).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

import trio

from appliance import __version__, logformat

if TYPE_CHECKING:  # imported when the client runs, not for --help
    from appliance.client.config import ClientConfig

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_SESSION_KEY = 0, 1, 2, 255


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The original's flags (client-knife.md §A.5), same spellings; then pushy's own flags for
    the node record (chef-client's ``-E`` for the environment)."""
    parser.add_argument(
        "-c", "--config", help="configuration file (push-jobs-client.rb, client.rb or .toml)"
    )
    parser.add_argument("-l", "--log_level", help="debug, info, warn, error, fatal")
    parser.add_argument("-L", "--logfile", help="log to this file instead of standard output")
    parser.add_argument(
        "--log_format", help="text (the default; no timestamp under journald) or json"
    )
    parser.add_argument("-N", "--node-name", dest="node_name", help="the node name")
    parser.add_argument(
        "-S", "--server", dest="chef_server_url", help="Chef server URL (…/organizations/ORG)"
    )
    parser.add_argument("-k", "--client_key", help="the client key file")
    parser.add_argument("-d", "--file_dir", help="directory for job files (default /tmp/chef-push)")
    parser.add_argument(
        "-M", "--max-body-size", dest="max_body_size", help="largest message sent, in bytes"
    )
    parser.add_argument(
        "--allow_unencrypted",
        action="store_true",
        default=None,
        help="allow an unencrypted connection to a server that offers no CURVE key (1.x servers)",
    )
    parser.add_argument(
        "-E",
        "--environment",
        help="the node's Chef environment, for node search (chef_environment:ENV)",
    )
    parser.add_argument(
        "--role",
        dest="roles",
        action="append",
        metavar="ROLE",
        help="a role of the node, for node search (role:ROLE); repeat for more",
    )
    parser.add_argument(
        "--tag",
        dest="tags",
        action="append",
        metavar="TAG",
        help="a tag of the node, for node search (tags:TAG); repeat for more",
    )
    parser.add_argument("-v", "--version", action="version", version=f"Push Client: {__version__}")


def client_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pushy-client",
        description="The push jobs node client: connects to the server and runs whitelisted jobs.",
    )
    add_arguments(parser)
    return run_client(parser.parse_args(argv))


def run_client(args: argparse.Namespace) -> int:
    from appliance.client.agent import Agent
    from appliance.client.config import ConfigError, find_config, load_config
    from appliance.client.fetch import FatalConfigError

    flags = {
        key: getattr(args, key)
        for key in (
            "log_level",
            "log_format",
            "node_name",
            "chef_server_url",
            "client_key",
            "file_dir",
            "max_body_size",
            "allow_unencrypted",
            "environment",
            "roles",
            "tags",
        )
    }
    flags["log_location"] = args.logfile
    path = find_config(args.config)
    try:
        config = load_config(path, flags)
        config.org  # noqa: B018 - validates chef_server_url early, with a clear message
    except ConfigError as exc:
        print(_unusable(str(exc), path, args.config), file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"pushy-client: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    for name, value in config.environment:  # the cookbook's environment_variables lines
        os.environ[name] = value
    os.environ.update(config.proxies.as_env())  # Chef exports its proxy settings likewise
    _setup_logging(config)
    if config.ignored:
        logging.getLogger("pushy.client").info(
            "settings with no effect on the push client: %s", ", ".join(config.ignored)
        )
    if path is None:
        logging.getLogger("pushy.client").warning(
            "No config file found or specified on command line. Using command line options instead."
        )
    try:
        agent = Agent(config, flags=flags)
    except OSError as exc:
        problem = f"cannot read the client key {config.client_key}: {exc.strerror}"
        print(_unusable(problem, path, args.config), file=sys.stderr)
        return EXIT_USAGE
    try:
        trio.run(agent.run)
    except BaseException as exc:  # trio's nurseries wrap it in an ExceptionGroup
        fatal = _find(exc, FatalConfigError)
        if fatal is None:
            raise
        print(str(fatal), file=sys.stderr)
        return fatal.exit_status
    return EXIT_OK


def _unusable(problem: str, path: str | None, explicit: str | None) -> str:
    """``problem``, and where the settings came from when no ``-c`` named the file: the
    files searched, in order, and how to make one when none exists."""
    from appliance.client.config import DEFAULT_SEARCH

    lines = [f"pushy-client: {problem}"]
    tried = ", ".join(DEFAULT_SEARCH)
    if path is None:
        lines[:0] = [
            f"pushy-client: no configuration file: tried {tried} (in this order); none exists, "
            "and no -c FILE was given."
        ]
        lines += [
            "pushy-client: to set up this node, run on a workstation: pushy admin "
            "node-bootstrap NODE --chef-server-url URL/organizations/ORG --key-path "
            "/etc/chef/push-jobs-client.pem --output-dir DIR; then copy DIR/push-jobs-client.rb "
            "and DIR/push-jobs-client.pem to /etc/chef/ (or run pushy-client -c FILE). "
            'See "The node client" in docs/installation.md.',
        ]
    elif not explicit:
        lines.append(f"pushy-client: (settings read from {path}: the first that exists of {tried})")
    return "\n".join(lines)


def _find(exc: BaseException, kind: type[BaseException]) -> Any:
    """``exc`` itself or the first ``kind`` inside (nested) exception groups, else None."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None


def _setup_logging(config: ClientConfig) -> None:
    """The original's text lines (``[time] LEVEL: message``, mixlib-log's), or JSON."""
    levels = {"warn": "WARNING", "fatal": "CRITICAL"}
    name = levels.get(config.log_level.lower(), config.log_level.upper())
    location = config.log_location
    handler: logging.Handler
    handler = logging.FileHandler(location) if location else logging.StreamHandler(sys.stdout)
    stamp = "[%(asctime)s] " if config.show_time else ""
    logformat.setup(
        name, config.log_format, handler, text="%(levelname)s: %(message)s", stamp=stamp
    )
