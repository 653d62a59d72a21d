"""Sub-command wiring for the operator CLI, and the one place its errors become exit codes.

Every command module exposes ``add_parser(sub, common)``; its top-level parser sets
``operator=True`` and each leaf parser sets ``func`` (args → exit code) with ``set_defaults``. `CliError` is printed as ``ERROR: message`` on stderr (knife's ``ui.error``)
and exits with its code: 100 for server and network errors, as knife does, 101 when the
server's HTTPS certificate is not trusted (``tlstrust.EXIT_UNTRUSTED``); `EXIT_CODES` is the
table every command's --help shows.
"""

from __future__ import annotations

import argparse
import sys
import textwrap

from appliance.knife.output import FORMATS, disable_colour
from appliance.knife.session import CliError

EXIT_CODES = (
    "Exit status (every operator command, pushy raw included): 0 success; 1 the operation "
    "failed (a job that did not succeed, a named node the organization does not have, an "
    "HTTP error answer to pushy raw, a missing argument); 2 a bad command line; 100 the "
    "server cannot be reached, answered with an error, or the configuration or an option "
    "value is unusable (knife's status); 101 the server's HTTPS certificate is not trusted "
    "(pushy ssl check says why); 130 interrupted (Ctrl-C)."
)


def connection_options() -> argparse.ArgumentParser:
    """Where to connect and as whom: every operator command, ``pushy raw`` included."""
    connection = argparse.ArgumentParser(add_help=False)
    group = connection.add_argument_group("connection (flags beat environment beat config files)")
    group.add_argument(
        "--server-url",
        metavar="URL",
        help="server URL, optionally with /organizations/ORG (env PUSHY_SERVER_URL)",
    )
    group.add_argument("-o", "--org", help="organization (env PUSHY_ORG)")
    group.add_argument("-u", "--user", help="user or client to sign as (env PUSHY_USER)")
    group.add_argument("-k", "--key", metavar="FILE", help="its private key (env PUSHY_KEY)")
    group.add_argument(
        "--profile", help="profile in ~/.chef/credentials (env PUSHY_PROFILE, CHEF_PROFILE)"
    )
    group.add_argument(
        "-c", "--config", metavar="FILE", help="knife.rb / config.rb or a pushy TOML file"
    )
    return connection


def common_options(connection: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Connection and output options shared by the commands that print knife's formats."""
    common = argparse.ArgumentParser(add_help=False, parents=[connection])
    common.add_argument(
        "-F",
        "--format",
        choices=FORMATS,
        default="summary",
        help="output format: summary/text (knife's text formatter, default) or json",
    )
    common.add_argument(
        "--no-color",
        "--no-colour",
        dest="no_color",
        action="store_true",
        help="no colour (also when NO_COLOR is set or the output is not a terminal)",
    )
    return common


# command → the module adding its parser, imported only for that command or for every one
COMMANDS = {
    "job": "appliance.knife.jobs",
    "node": "appliance.knife.nodes",
    "admin": "appliance.knife.admin",
    "watch": "appliance.knife.watch",
    "ssl": "appliance.knife.sslcerts",
    "raw": "appliance.rawrequest",
}


def add_parsers(sub: argparse._SubParsersAction, only: str | None = None) -> None:
    """Every operator command, or only ``only`` (the one a command line names)."""
    import importlib

    connection = connection_options()
    common = common_options(connection)
    for name, module_name in COMMANDS.items():
        if only not in (None, name):
            continue
        module = importlib.import_module(module_name)
        module.add_parser(sub, connection if name == "raw" else common)
        if name != "ssl":
            _with_epilog(sub.choices[name])


def _with_epilog(parser: argparse.ArgumentParser) -> None:
    """The exit status table under every operator command's --help."""
    raw = issubclass(parser.formatter_class, argparse.RawDescriptionHelpFormatter)
    parser.epilog = textwrap.fill(EXIT_CODES, 90) if raw else EXIT_CODES
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _with_epilog(child)


def dispatch(args: argparse.Namespace) -> int:
    """Run the chosen command; knife's error printing and exit statuses."""
    func = getattr(args, "func", None)
    if func is None:
        print(f"USAGE: pushy {args.command} SUBCOMMAND (see pushy {args.command} --help)")
        return 1
    if getattr(args, "no_color", False):
        disable_colour()
    try:
        return func(args)
    except CliError as exc:
        print(f"ERROR: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
