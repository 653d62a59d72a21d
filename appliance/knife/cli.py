"""Sub-command wiring for the operator CLI, and the one place its errors become exit codes.

Every command module exposes ``add_parser(sub, common)``; its top-level parser sets
``operator=True`` and each leaf parser sets ``func`` (args → exit code) with ``set_defaults``. `CliError` is printed as ``ERROR: message`` on stderr (knife's ``ui.error``)
and exits with its code: 100 for server and network errors, as knife does; 101 when the
server's HTTPS certificate is not trusted (``tlstrust.EXIT_UNTRUSTED``).
"""

from __future__ import annotations

import argparse
import sys

from appliance.knife.output import FORMATS
from appliance.knife.session import CliError


def common_options() -> argparse.ArgumentParser:
    """Connection and output options shared by every operator command."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection (flags beat environment beat config files)")
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
    common.add_argument(
        "-F",
        "--format",
        choices=FORMATS,
        default="summary",
        help="output format: summary/text (knife's text formatter, default) or json",
    )
    return common


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from appliance.knife import admin, jobs, nodes, sslcerts, watch

    common = common_options()
    for module in (jobs, nodes, admin, watch, sslcerts):
        module.add_parser(sub, common)


def dispatch(args: argparse.Namespace) -> int:
    """Run the chosen command; knife's error printing and exit statuses."""
    func = getattr(args, "func", None)
    if func is None:
        print(f"USAGE: pushy {args.command} SUBCOMMAND (see pushy {args.command} --help)")
        return 1
    try:
        return func(args)
    except CliError as exc:
        print(f"ERROR: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
