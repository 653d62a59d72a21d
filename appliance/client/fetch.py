"""The push jobs configuration, fetched from the server (signed GET /pushy/config/NODE) and
retried with backoff until it works; and the node record published for search.

The server's answer becomes a ``Connection`` (its sockets not open yet); an answer that makes
running impossible is a ``FatalConfigError`` with the exit status the original client used.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from appliance import sdnotify
from appliance.client import facts
from appliance.client.channel import Connection, jittered
from appliance.client.config import ClientConfig
from appliance.core import servedfetches
from appliance.core.httptext import MAX_TEXT, error_strings, http_error
from appliance.core.keys import decrypt_session_key, load_public_pem
from appliance.core.wire import PROTOCOL_VERSION
from appliance.signedhttp import signed_request

log = logging.getLogger("pushy.client")

CONFIG_TIMEOUT_SECONDS = 5.0
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 120.0
# A refused fetch (HTTP 401) is explained in full at ERROR the first time and then at most
# this often; the retries in between log one short WARNING line each (every 2 min at most).
EXPLAIN_EVERY_SECONDS = 30 * 60.0


class Refused(ValueError):
    """HTTP 401 to the config fetch: the server does not accept how this node signs (an
    unknown client, a key it does not know, a clock too far off). Retried: the operator can
    fix it on either side while the client waits."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("HTTP 401: " + "; ".join(errors))


def refusal_advice(exc: Refused, *, node: str, org: str, server_url: str, key_file: str) -> str:
    """What to fix when the server refuses the config fetch, in the words of the fix."""
    said = "; ".join(exc.errors)
    head = f"The server {server_url} refuses node '{node}' (HTTP 401: {said}). "
    if any("clock" in e.lower() for e in exc.errors):
        return head + (
            "This machine's clock is more than 15 minutes away from the server's: "
            "synchronize it (NTP). Retrying with back-off."
        )
    if servedfetches.REPLAYED in exc.errors:
        return head + (
            "It answered this very signed request before (signatures are per second: this "
            "client fetched within the same second, e.g. right after a restart). Retrying "
            "with a new signature."
        )
    if any("Failed to authenticate" in e for e in exc.errors):
        fix = (
            f"The server has no client named '{node}' in organization '{org}': create it on a "
            f"workstation with `pushy admin node-bootstrap {node} -o {org} --key-file FILE` "
            f"and copy FILE to {key_file}, or set node_name to the node's client name"
        )
    else:
        fix = (
            f"The server does not know the key in {key_file}: give the client a new key on a "
            f"workstation with `pushy admin client rotate-key {node} -o {org} --key-file FILE` "
            f"and copy FILE to {key_file}, or copy the node's right key to {key_file}"
        )
    return (
        head
        + fix
        + (
            ". The client re-reads the key file before every retry (no restart needed). "
            "Retrying with back-off; this explanation is repeated every "
            f"{EXPLAIN_EVERY_SECONDS / 60:.0f} minutes, one short line per retry in between."
        )
    )


class FatalConfigError(Exception):
    """The server's answer makes running impossible (exit with ``exit_status``)."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def server_origin(chef_server_url: str) -> tuple[str, str]:
    """(origin, path prefix) of the Chef server URL: requests are signed with the full path,
    prefix included, and sent to the origin."""
    base = chef_server_url.rstrip("/")
    prefix = urllib.parse.urlsplit(base).path
    origin = base[: len(base) - len(prefix)] if prefix else base
    return origin, prefix


async def fetch_until_it_works(
    fetch: Callable[[], Awaitable[Connection]],
    node: str,
    stopping: trio.Event,
    explain: Callable[[Refused], str] = str,
) -> Connection | None:
    """Retry ``fetch`` forever (capped exponential backoff with jitter): a node may boot first.
    None once ``stopping`` is set; a ``FatalConfigError`` goes through. A refusal is logged
    as ``explain`` words it, in full only every `EXPLAIN_EVERY_SECONDS`."""
    delay = BACKOFF_FIRST_SECONDS
    explained_at: float | None = None
    while not stopping.is_set():
        wait, next_delay = backoff(delay)
        try:
            return await fetch()
        except FatalConfigError:
            raise
        except Refused as exc:
            now = trio.current_time()
            if explained_at is None or now - explained_at >= EXPLAIN_EVERY_SECONDS:
                explained_at = now
                log.error("[%s] Could not download push jobs config: %s", node, explain(exc))
            else:
                log.warning("[%s] still refused (%s); retrying in %.0f s", node, exc, wait)
            sdnotify.status(f"refused by the server, retrying in {wait:.0f} s: {str(exc)[:200]}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("[%s] Could not download push jobs config: %s", node, exc)
            why = "server unreachable" if isinstance(exc, OSError) else "no config"
            sdnotify.status(f"{why}, retrying in {delay:.0f} s: {str(exc)[:200]}")
        with trio.move_on_after(wait):
            await stopping.wait()
        delay = next_delay
    return None


def backoff(delay: float) -> tuple[float, float]:
    """(wait now, next delay): capped exponential backoff, jittered so that nodes that lost the
    server together do not all come back in the same instant."""
    return jittered(delay), min(delay * 2, BACKOFF_MAX_SECONDS)


def config_path(path_prefix: str, node: str, curve_public: bytes) -> str:
    """The config request's path and query, as the original server expects them: our CURVE
    public key offered as ``ccpk``, and the protocol we speak."""
    ccpk = urllib.parse.quote_plus(curve_public.decode("ascii"))
    return f"{path_prefix}/pushy/config/{node}?ccpk={ccpk}&version={PROTOCOL_VERSION}"


def connection_from_answer(
    status: int, body: Any, private_key: RSAPrivateKey, *, allow_unencrypted: bool, node: str
) -> Connection:
    """What the server's answer to the config request becomes (no I/O: each side fetches its
    own way). ``ValueError``/``KeyError``/``TypeError`` for an answer worth retrying,
    ``FatalConfigError`` for one that makes running impossible."""
    if status == 401:
        raise Refused([text[:MAX_TEXT] for text in error_strings(body)])
    if status != 200 or not isinstance(body, dict):
        raise ValueError(http_error(status, body))
    legacy = "curve_public_key" not in body
    if legacy and not allow_unencrypted:
        raise FatalConfigError(
            "Exiting: No key returned from server; server may be using 1.x protocol. "
            "Set allow_unencrypted to true (or pass --allow_unencrypted) to connect to it "
            "without encryption.",
            1,
        )
    if legacy:
        log.warning(
            "[%s] No key returned from server; falling back to 1.x protocol (no encryption)",
            node,
        )
    try:
        session_key = decrypt_session_key(private_key, body["encoded_session_key"]["key"])
    except (KeyError, TypeError, ValueError) as exc:
        raise FatalConfigError(f"No session key found in config: {exc}", 255) from exc
    hb = body["push_jobs"]["heartbeat"]
    return Connection(
        config=body,
        session_key=session_key,
        server_key=load_public_pem(body["public_key"]),
        incarnation=str(body["incarnation_id"]),
        interval=float(hb["interval"]),
        legacy=legacy,
    )


async def fetch_config(
    config: ClientConfig,
    *,
    node: str,
    key_pem: str,
    private_key: RSAPrivateKey,
    curve_public: bytes,
) -> Connection:
    """One signed GET of the node's configuration, offering our CURVE public key."""
    origin, path_prefix = server_origin(config.chef_server_url)
    path = config_path(path_prefix, node, curve_public)
    log.info("[%s] Retrieving configuration from %s%s", node, origin, path)
    status, body = await trio.to_thread.run_sync(
        lambda: signed_request(
            origin,
            "GET",
            path,
            None,
            node,
            key_pem,
            timeout=CONFIG_TIMEOUT_SECONDS,
            tls=config.tls,
        )
    )
    return connection_from_answer(
        status, body, private_key, allow_unencrypted=config.allow_unencrypted, node=node
    )


async def publish_node_record(config: ClientConfig, *, node: str, key_pem: str) -> None:
    """PUT (or create) this node's record so the server can search nodes."""
    base = config.chef_server_url.rstrip("/")
    origin, prefix = server_origin(base)
    record = facts.node_record(
        node,
        facts.automatic_attributes(base),
        attributes=dict(config.node_attributes),
        environment=config.chef_environment,
        tags=config.tags,
        roles=config.roles,
    )

    def publish() -> int:
        status, _ = signed_request(
            origin,
            "PUT",
            f"{prefix}/nodes/{node}",
            record,
            node,
            key_pem,
            timeout=CONFIG_TIMEOUT_SECONDS,
            tls=config.tls,
        )
        if status == 404:
            status, _ = signed_request(
                origin,
                "POST",
                f"{prefix}/nodes",
                record,
                node,
                key_pem,
                timeout=CONFIG_TIMEOUT_SECONDS,
                tls=config.tls,
            )
        return status

    try:
        status = await trio.to_thread.run_sync(publish)
    except OSError as exc:
        log.info("[%s] node record not published: %s", node, exc)
        return
    if status in (200, 201):
        log.info("[%s] published the node record for search", node)
    else:
        log.info("[%s] the server did not take the node record (HTTP %d)", node, status)
