"""``pushy admin …``: the Chef identity chores around push jobs, for operators without curl.

Every command is one or a few Chef Server API (v1) calls to the appliance's identity API
(organizations, users, clients and their keys, groups), signed as the configured user (usually
the superuser ``pivotal``). Private keys made by the server are written to files created with
``O_CREAT|O_EXCL`` and mode 0600 from the first byte; an existing file is never overwritten
unless ``--force`` (then a new 0600 file replaces it atomically). Files are checked before the
server is asked, so a refused file does not leave a client without its key.

Group changes read the group and PUT it back with the member added or removed (Chef's
``{"actors": {...}}`` form). ``pushy_job_readers`` and ``pushy_job_writers`` are created when
missing, with a note: once such a group exists, only its members may read (or start) jobs.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.client.bootstrap import client_config_text
from appliance.knife import tlscert
from appliance.knife.credentials import connect
from appliance.knife.files import check_target, write_private
from appliance.knife.output import emit
from appliance.knife.session import Api, ApiError, CliError

if TYPE_CHECKING:
    from appliance.core.settings import Settings

PUSHY_GROUPS = ("pushy_job_readers", "pushy_job_writers")
CONFIG_NAME = "push-jobs-client.rb"
KEY_NAME = "push-jobs-client.pem"
DEFAULT_WHITELIST = {"chef-client": "chef-client"}
_GROUP_EFFECT = {
    "pushy_job_readers": "only its members (and the superuser) may read jobs",
    "pushy_job_writers": "only its members (and the superuser) may start jobs",
}

__all__ = ["add_parser", "parse_member", "write_private"]


# ---------------------------------------------------------------------------------------
# Helpers


def _names(listing: Any) -> list[str]:
    """A Chef name → URI map (or a list) as sorted names."""
    if isinstance(listing, dict):
        return sorted(listing)
    if isinstance(listing, list):
        names = [e.get("user", {}).get("username") if isinstance(e, dict) else e for e in listing]
        return sorted(str(n) for n in names if n is not None)
    return []


def _out(args: argparse.Namespace, data: Any) -> int:
    emit(data, args.format, sys.stdout)
    return 0


def _note(text: str) -> None:
    print(text, file=sys.stderr)


def _key_file(args: argparse.Namespace) -> Path:
    path = Path(os.path.expanduser(args.key_file))
    check_target(path, args.force)
    return path


def _private_key(reply: Any, where: str) -> str:
    key = reply.get("private_key") if isinstance(reply, dict) else None
    if key is None and isinstance(reply, dict):
        key = (reply.get("chef_key") or {}).get("private_key")
    if not isinstance(key, str) or "-----BEGIN" not in key:
        raise CliError(f"the server's answer to {where} has no private key")
    return key


def parse_member(text: str) -> tuple[str, str]:
    """``alice``/``user:alice`` → (``users``, ``alice``); ``client:n1``; ``group:g``."""
    kind, sep, name = text.partition(":")
    if not sep:
        kind, name = "user", text
    lists = {"user": "users", "client": "clients", "group": "groups"}
    if kind not in lists or not name:
        raise CliError(f"{text!r}: a member is USER, user:USER, client:NAME or group:NAME")
    return lists[kind], name


# ---------------------------------------------------------------------------------------
# Organizations and users


def _org_create(args: argparse.Namespace) -> int:
    target = None
    if args.validator_key:
        target = Path(os.path.expanduser(args.validator_key))
        check_target(target, args.force)
    api = connect(args)
    body = {"name": args.name, "full_name": args.full_name or args.name}
    reply = api.post("/organizations", body)
    out = {"name": args.name, "uri": reply.get("uri"), "validator": reply.get("clientname")}
    if target is not None:
        write_private(target, _private_key(reply, "POST /organizations"), force=args.force)
        out["validator_key"] = str(target)
    return _out(args, out)


def _org_list(args: argparse.Namespace) -> int:
    return _out(args, _names(connect(args).get("/organizations")))


def _user_create(args: argparse.Namespace) -> int:
    target = _key_file(args)
    api = connect(args)
    body: dict[str, Any] = {"username": args.name, "create_key": True}
    for field in ("email", "first_name", "last_name", "display_name", "password"):
        value = getattr(args, field)
        if value is not None:
            body[field] = value
    reply = api.post("/users", body)
    write_private(target, _private_key(reply, "POST /users"), force=args.force)
    return _out(args, {"name": args.name, "uri": reply.get("uri"), "key_file": str(target)})


def _user_list(args: argparse.Namespace) -> int:
    return _out(args, _names(connect(args).get("/users")))


def _user_add_to_org(args: argparse.Namespace) -> int:
    api = connect(args)
    reply = api.post(f"/organizations/{args.target_org}/users", {"username": args.user_name})
    return _out(args, {"user": args.user_name, "org": args.target_org, "uri": reply.get("uri")})


# ---------------------------------------------------------------------------------------
# Clients


def _client_create(args: argparse.Namespace) -> int:
    target = _key_file(args)
    api = connect(args)
    reply = api.post(api.org_path("clients"), {"name": args.name, "create_key": True})
    write_private(target, _private_key(reply, "POST clients"), force=args.force)
    return _out(args, {"name": args.name, "uri": reply.get("uri"), "key_file": str(target)})


def _client_list(args: argparse.Namespace) -> int:
    api = connect(args)
    return _out(args, _names(api.get(api.org_path("clients"))))


def _client_delete(args: argparse.Namespace) -> int:
    api = connect(args)
    reply = api.delete(api.org_path(f"clients/{args.name}"))
    if args.format == "json":
        return _out(args, reply)
    print(f"Deleted client[{args.name}]")
    return 0


def _new_key_name(existing: list[str]) -> str:
    if "default" not in existing:
        return "default"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = f"rotated-{stamp}"
    for number in range(2, 100):
        if name not in existing:
            return name
        name = f"rotated-{stamp}-{number}"
    raise CliError(f"too many keys named rotated-{stamp}-*")


def _client_rotate_key(args: argparse.Namespace) -> int:
    target = _key_file(args)
    api = connect(args)
    keys_path = api.org_path(f"clients/{args.name}/keys")
    old = [k["name"] for k in api.get(keys_path) if isinstance(k, dict) and "name" in k]
    new = _new_key_name(old)
    body = {"name": new, "create_key": True, "expiration_date": "infinity"}
    reply = api.post(keys_path, body)
    write_private(target, _private_key(reply, f"POST {keys_path}"), force=args.force)
    deleted = []
    if not args.keep_old:
        for name in old:
            api.delete(f"{keys_path}/{name}")
            deleted.append(name)
    out = {"name": args.name, "key_name": new, "key_file": str(target), "deleted_keys": deleted}
    return _out(args, out)


# ---------------------------------------------------------------------------------------
# Groups


def _get_group(api: Api, group: str, *, create: bool) -> dict[str, Any]:
    path = api.org_path(f"groups/{group}")
    reply = api.request("GET", path)
    if reply.status == 404 and create and group in PUSHY_GROUPS:
        api.post(api.org_path("groups"), {"groupname": group})
        _note(f"Created group {group} in {api.org}: from now on {_GROUP_EFFECT[group]}.")
        return api.get(path)
    if not 200 <= reply.status < 300:
        raise ApiError(reply.status, reply.body(), "GET", path)
    body = reply.body()
    if not isinstance(body, dict):
        raise CliError(f"GET {path}: not a group: {body!r}")
    return body


def _change_group(args: argparse.Namespace, add: bool) -> int:
    kind, name = parse_member(args.member)
    api = connect(args)
    group = _get_group(api, args.group, create=add)
    members = {k: list(group.get(k) or []) for k in ("users", "clients", "groups")}
    present = name in members[kind]
    if present == add:
        state = "already a member" if add else "not a member"
        _note(f"{args.member} is {state} of {args.group}; nothing to change.")
        return _out(args, group)
    if add:
        members[kind].append(name)
    else:
        members[kind].remove(name)
    body = {"groupname": args.group, "actors": members}
    return _out(args, api.put(api.org_path(f"groups/{args.group}"), body))


def _group_add(args: argparse.Namespace) -> int:
    return _change_group(args, add=True)


def _group_remove(args: argparse.Namespace) -> int:
    return _change_group(args, add=False)


def _group_list(args: argparse.Namespace) -> int:
    api = connect(args)
    return _out(args, _names(api.get(api.org_path("groups"))))


def _group_show(args: argparse.Namespace) -> int:
    return _out(args, _get_group(connect(args), args.group, create=False))


# ---------------------------------------------------------------------------------------
# The web dashboard


def _login_link(args: argparse.Namespace) -> int:
    if not 1 <= args.ttl <= 3600:
        raise CliError("--ttl: seconds from 1 to 3600")
    api = connect(args)
    body: dict[str, Any] = {"user": args.user_name, "ttl": args.ttl}
    if api.org:
        body["org"] = api.org
    reply = api.post("/pushy/dashboard/login_links", body)
    if args.format == "json":
        return _out(args, reply)
    print(reply["url"])
    _note(
        f"Open it in a browser by {reply['expires_at']} (UTC); it logs {reply['user']} in to "
        f"org {reply['org']} once, then stops working. Anyone holding it can use it: send it "
        "only to that user."
    )
    return 0


# ---------------------------------------------------------------------------------------
# node-bootstrap


def _whitelist(text: str | None) -> dict[str, str]:
    if text is None:
        return dict(DEFAULT_WHITELIST)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CliError(f"--whitelist is not valid JSON: {exc}") from None
    if (
        not isinstance(value, dict)
        or not value
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    ):
        raise CliError('--whitelist must be a JSON object of job name → command: {"name": "cmd"}')
    return value


def _node_bootstrap(args: argparse.Namespace) -> int:
    whitelist = _whitelist(args.whitelist)
    config_path = key_path = None
    if args.output_dir:
        directory = Path(os.path.expanduser(args.output_dir))
        if directory.exists() and not directory.is_dir():
            raise CliError(f"--output-dir {directory} is not a directory")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        config_path, key_path = directory / CONFIG_NAME, directory / KEY_NAME
        check_target(config_path, args.force)
    if args.key_file:
        key_path = Path(os.path.expanduser(args.key_file))
    if key_path is not None:
        check_target(key_path, args.force)
    api = connect(args)
    org = api.org
    node_url = args.chef_server_url or f"{api.creds.server_url}/organizations/{org}"
    if args.key_path:
        client_key = args.key_path
    elif key_path is not None:
        client_key = str(key_path.resolve())
    else:
        client_key = f"/etc/chef/{KEY_NAME}"
    config = client_config_text(
        chef_server_url=node_url,
        node_name=args.node,
        client_key=client_key,
        whitelist=whitelist,
        file_dir=args.file_dir,
        environment=args.environment,
        roles=args.role,
        tags=args.tag,
    )
    path = api.org_path("clients")
    try:
        reply = api.post(path, {"name": args.node, "create_key": True})
    except ApiError as exc:
        if exc.status != 409:
            raise
        raise CliError(
            f"client {args.node} already exists in {org}; to give it a new key: "
            f"pushy admin client rotate-key {args.node} --key-file FILE"
        ) from None
    private = _private_key(reply, f"POST {path}")
    if key_path is not None:
        write_private(key_path, private, force=args.force)
    if config_path is not None:
        write_private(config_path, config, force=args.force, mode=0o644)
        next_step = f"pushy-client -c {config_path}"
        out = {"node": args.node, "config": str(config_path), "key_file": str(key_path)}
        return _out(args, {**out, "next_step": next_step})
    if args.format == "json":
        out = {"node": args.node, "config": config, "client_key": client_key}
        if key_path is None:
            out["private_key"] = private
        return _out(args, out)
    sys.stdout.write(config)
    if key_path is None:
        sys.stdout.write(f"\n# {client_key} (mode 0600):\n{private}")
    sys.stdout.flush()
    _note(
        f"Save the config as /etc/chef/{CONFIG_NAME} and the key as {client_key} (mode 0600), "
        f"then run: pushy-client -c /etc/chef/{CONFIG_NAME}"
    )
    return 0


# ---------------------------------------------------------------------------------------
# Parsers


def _usage(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def show(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 1

    return show


def _key_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--key-file", required=True, metavar="FILE", help=f"write {what} here (mode 0600)"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing FILE")


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    admin = sub.add_parser(
        "admin",
        help="create organizations, users, clients and groups; bootstrap nodes",
        description="Identity chores for push jobs (Chef Server API), signed as the "
        "configured user (usually pivotal).",
    )
    admin.set_defaults(operator=True, func=_usage(admin))
    objects = admin.add_subparsers(dest="admin_object", metavar="OBJECT")

    def leaf(group: Any, name: str, func: Callable, help_text: str) -> argparse.ArgumentParser:
        parser = group.add_parser(name, parents=[common], help=help_text, description=help_text)
        parser.set_defaults(func=func)
        return parser

    def branch(name: str, help_text: str) -> Any:
        parser = objects.add_parser(name, help=help_text, description=help_text)
        parser.set_defaults(func=_usage(parser))
        return parser.add_subparsers(dest="admin_action", metavar="ACTION")

    orgs = branch("org", "organizations")
    p = leaf(orgs, "create", _org_create, "create an organization (POST /organizations)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--full-name", metavar="TEXT", help="full name (default: NAME)")
    p.add_argument(
        "--validator-key", metavar="FILE", help="write the validator's key here (mode 0600)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing FILE")
    leaf(orgs, "list", _org_list, "list organizations")

    users = branch("user", "users")
    p = leaf(users, "create", _user_create, "create a user with a server-made key")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--email")
    p.add_argument("--first-name", dest="first_name")
    p.add_argument("--last-name", dest="last_name")
    p.add_argument("--display-name", dest="display_name")
    p.add_argument("--password", help="sent for Chef compatibility (the appliance uses keys)")
    _key_options(p, "the user's private key")
    leaf(users, "list", _user_list, "list users")
    p = leaf(users, "add-to-org", _user_add_to_org, "make a user a member of an organization")
    p.add_argument("user_name", metavar="USER")
    p.add_argument("target_org", metavar="ORG")

    clients = branch("client", "clients (nodes) of the organization")
    p = leaf(clients, "create", _client_create, "create a client with a server-made key")
    p.add_argument("name", metavar="NAME")
    _key_options(p, "the client's private key")
    leaf(clients, "list", _client_list, "list clients")
    p = leaf(clients, "rotate-key", _client_rotate_key, "give a client a new key")
    p.add_argument("name", metavar="NAME")
    _key_options(p, "the new private key")
    p.add_argument("--keep-old", action="store_true", help="keep the old keys (delete them later)")
    p = leaf(clients, "delete", _client_delete, "delete a client")
    p.add_argument("name", metavar="NAME")

    groups = branch("group", "groups (admins, pushy_job_readers, pushy_job_writers, ...)")
    member_help = "USER, user:USER, client:NAME or group:NAME"
    for action, func, text in (
        ("add", _group_add, "add a member (pushy_job_* groups are created if missing)"),
        ("remove", _group_remove, "remove a member"),
    ):
        p = leaf(groups, action, func, text)
        p.add_argument("member", metavar="MEMBER", help=member_help)
        p.add_argument("group", metavar="GROUP")
    leaf(groups, "list", _group_list, "list groups")
    p = leaf(groups, "show", _group_show, "show a group's members")
    p.add_argument("group", metavar="GROUP")

    p = objects.add_parser(
        "login-link",
        parents=[common],
        help="print a one-time link that logs USER in to the web dashboard",
        description="Ask the server for a one-time URL that opens the web dashboard as USER "
        "(in the org of --org or the configured URL; the user's only org otherwise). The URL "
        "works once, within --ttl seconds; it becomes a session cookie in the browser that "
        "opens it. Signed as the configured user: the superuser, or USER itself.",
    )
    p.set_defaults(func=_login_link)
    p.add_argument("user_name", metavar="USER")
    p.add_argument(
        "--ttl", type=int, default=300, metavar="SECONDS", help="how long the link works (300)"
    )

    p = objects.add_parser(
        "node-bootstrap",
        parents=[common],
        help="create a node's client and its push client config + key",
        description="Create the client NODE (a server-made key) and write a push-jobs-client.rb "
        "in the push-jobs cookbook's format with its key; without --output-dir both are "
        "printed.",
    )
    p.set_defaults(func=_node_bootstrap)
    p.add_argument("node", metavar="NODE")
    p.add_argument(
        "--whitelist", metavar="JSON", help='job name → command (default {"chef-client": ...})'
    )
    p.add_argument(
        "--output-dir", metavar="DIR", help=f"write DIR/{CONFIG_NAME} and DIR/{KEY_NAME}"
    )
    p.add_argument("--file-dir", metavar="DIR", help="the client's file_dir")
    p.add_argument(
        "-E",
        "--environment",
        metavar="ENV",
        help="the node's Chef environment, for search (chef_environment:ENV)",
    )
    p.add_argument(
        "--role", action="append", default=[], metavar="ROLE", help="a role, for search (repeat)"
    )
    p.add_argument(
        "--tag", action="append", default=[], metavar="TAG", help="a tag, for search (repeat)"
    )
    p.add_argument("--key-file", metavar="FILE", help="write the key here (mode 0600)")
    p.add_argument(
        "--key-path",
        metavar="PATH",
        help="client_key as written in the config (default: the key file)",
    )
    p.add_argument(
        "--chef-server-url", metavar="URL", help="the URL the node uses (default: this CLI's)"
    )
    p.add_argument("--force", action="store_true", help="replace existing files")

    tlscert.add_parser(objects)

    p = objects.add_parser(
        "migrate-store",
        help="copy the server's event log into an empty PostgreSQL database",
        description="Copy the event log of a stopped server (its state directory) into an "
        "empty PostgreSQL database: the newest snapshot and every record after it, unchanged, "
        "in one transaction. The state directory is left as it was. Exit 0 when copied, 100 when "
        "refused (the server runs, the database is not empty, the log is damaged).",
    )
    p.set_defaults(func=_migrate_store)
    p.add_argument("--from", dest="source", default="file", help="what to copy: file (default)")
    p.add_argument(
        "--to", dest="target", required=True, metavar="URL", help="postgresql://USER@HOST:PORT/DB"
    )
    p.add_argument("--state-dir", type=Path, help="the server's state directory")
    p.add_argument(
        "-c", "--config", type=Path, help="the server's settings file (its state_dir is used)"
    )


def _migrate_store(args: argparse.Namespace) -> int:
    if args.source != "file":
        raise CliError("--from: only 'file' (the event log in the state directory) is copied")
    if not args.target.startswith(("postgresql://", "postgres://")):
        raise CliError("--to takes a PostgreSQL URL: postgresql://USER@HOST:PORT/DB")
    state_dir = args.state_dir or _configured_state_dir(args.config)
    try:
        import psycopg

        from appliance.store.errors import LogCorruption, StorageError
        from appliance.store.migrate import migrate_file_to_postgresql
    except ImportError as exc:
        raise CliError(
            f"this needs PostgreSQL's client library, libpq (Debian: apt-get install libpq5): {exc}"
        ) from None
    where = _without_password(args.target)
    print(f"Copying the event log of {state_dir} to {where} ...", file=sys.stderr)
    try:
        copied = migrate_file_to_postgresql(
            state_dir,
            args.target,
            password_file=_configured(args.config).store_password_file if args.config else None,
            progress=lambda text: print(f"  {text}", file=sys.stderr),
        )
    except StorageError as exc:
        if exc.errno == errno.EBUSY:  # the log's lock: a server holds it
            raise CliError(
                f"the event log in {state_dir} is in use: stop the server first"
            ) from None
        raise CliError(exc.strerror or str(exc)) from None
    except LogCorruption as exc:
        raise CliError(f"the event log is damaged ({exc}): nothing copied") from None
    except ValueError as exc:
        raise CliError(f"{exc}: nothing copied") from None
    except psycopg.Error as exc:
        raise CliError(f"PostgreSQL ({where}): {exc}".strip()) from None
    snapshot = (
        "no snapshot"
        if copied.snapshot_seq is None
        else f"the snapshot at seq {copied.snapshot_seq}"
    )
    print(
        f"Copied {snapshot} and {copied.records} records (up to seq {copied.last_seq}) "
        f"in {copied.seconds:.1f} s. {state_dir} is unchanged."
    )
    return 0


def _configured_state_dir(config: Path | None) -> Path:
    if config is None:
        return Path("/var/lib/pushy")
    return Path(_configured(config).state_dir)


def _configured(config: Path) -> Settings:
    """The server's settings in ``config`` (a clear error when they cannot be read)."""
    import tomllib

    from appliance.core.settings import SettingsError, load_settings

    try:
        settings, _ = load_settings(tomllib.loads(config.read_text(encoding="utf-8")))
    except (OSError, ValueError, SettingsError) as exc:
        raise CliError(f"cannot read {config}: {exc}") from None
    return settings


def _without_password(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
