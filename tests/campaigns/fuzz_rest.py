"""REST fuzzing: schemathesis against the served OpenAPI document, every route, signed requests.

A real server with a real org: an org admin, a reader (an org member outside ``admins``), two
real ``pushy client`` nodes that run jobs, finished and live jobs with captured output, node
records, groups, extra keys, and sacrificial objects that fuzzed DELETEs may remove (put back
now and then). The document is loaded from ``GET /pushy/openapi.json``; for every operation
schemathesis generates positive and negative cases (hypothesis, seeded). Each case is then
biased towards things that exist (the org, job ids, node, client, group, key names), given an
identity (mostly the org admin; also the superuser, the reader, a client without a node, or
no signature at all), sometimes an odd ``Accept``, and signed just before it is sent, over the
method, the path as the server reads it (percent-decoded, as mochiweb's ``path``) and the
exact body bytes, with a random Chef protocol version (1.0, 1.1, 1.3). Some cases instead get
a raw body (malformed, deeply nested, huge, odd Content-Type), a tampered signed header, a
trailing slash; some paths get a method the document does not list (405).

Every response is checked: no 5xx, a documented status code and content type, documented
headers, a body that conforms to the documented schema, negative data rejected and positive
data accepted (schemathesis' checks; a few 400s a schema cannot express are counted apart,
``SEMANTIC_400``), every error (4xx/5xx) a JSON object with an ``error`` string or list,
unsigned and tampered requests refused, the reader never changing anything. At the end the
server must still run, its log must hold no ERROR, and a real node must still run a job.

Run ``python -m tests.campaigns.fuzz_rest --cases 10000``; tests/e2e/test_rest_fuzz.py is the
CI slice.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import sys
import tempfile
import time
import traceback
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import orjson
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from appliance.core import chefauth
from appliance.core.keys import load_private_pem
from tests.support import (
    ClientFleet,
    Server,
    new_user,
    set_group,
    wait_for,
)

ORG = "fuzzorg"
OTHER_ORG = "otherorg"  # an org the fuzzing identities are not members of
NODES = ("fuzznode1", "fuzznode2")
ADMIN = "fuzzadmin"
CLIENT = "fuzzclient"  # a client identity without a running node (a node's own config fetch
# would rotate its session key and cut the real node off, as any holder of its key can)
READER = "fuzzreader"
# objects fuzzed writes may delete or change; put back by ``Fixture.replenish``
SPARE_CLIENTS = ("spare1", "spare2")
SPARE_NODES = ("web1", "web2", "db1")
SPARE_GROUPS = ("ops", "spare-group")
SPARE_KEYS = ("k2",)
WHITELIST = '{"chef-client"=>"echo fuzzed", "fail"=>"false", "sleep"=>"sleep 2"}'
FEED_SECONDS = 0.4  # how long an event stream is read (the org feed never ends)
REQUEST_SECONDS = 20.0
REPLENISH_EVERY = 150
ACCEPTS = (
    "text/html",
    "application/json",
    "text/event-stream",
    "application/octet-stream",
    "*/*",
    "application/*",
    "text/*;q=0.5, application/json;q=0",
    "garbage/;;;",
)

BASE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
SIGNED_AS_SOMEONE_WHO_MAY = ("admin", "superuser")

# 400s for schema-valid data that a JSON schema cannot express (a query grammar, a reference to
# an object that does not exist, a field that must match the URL, a PEM's content, two fields
# that exclude each other); each is named in the operation's description. positive_data_acceptance
# failures with one of these errors are counted, not reported.
SEMANTIC_400 = re.compile(
    r"invalid search query: |invalid 'sort' value: |Node name mismatch\.|"
    r"Field 'public_key' invalid|Field 'create_key' invalid: cannot be combined|"
    r"is not a member of organization|not found in organization|"
    r"renaming a group is not supported|"
    r"invalid file contents \(couldn't decode base64 string\)|invalid file size|"
    r"Field 'expiration_date' invalid"
)

# operations that change nothing (the reader may call them)
READ_ONLY = {("POST", "/organizations/{org}/search/{index}")}


# ---------------------------------------------------------------------------------------------
# The report


@dataclass
class Finding:
    kind: str  # the check that failed (or "transport", "fixture", ...)
    operation: str  # "GET /organizations/{org}/pushy/jobs"
    identity: str
    status: int | None
    message: str
    reproduce: str = ""

    def key(self) -> tuple[str, str, int | None, str]:
        return self.kind, self.operation, self.status, self.message.splitlines()[0][:160]

    def __str__(self) -> str:
        text = f"[{self.kind}] {self.operation} as {self.identity} -> {self.status}: {self.message}"
        return text + (f"\n    {self.reproduce}" if self.reproduce else "")


@dataclass
class Report:
    seed: int
    cases: int = 0
    seconds: float = 0.0
    per_operation: Counter = field(default_factory=Counter)
    per_identity: Counter = field(default_factory=Counter)
    per_status: Counter = field(default_factory=Counter)
    failures_by_kind: Counter = field(default_factory=Counter)
    failures: list[Finding] = field(default_factory=list)  # one per distinct failure
    failure_count: int = 0
    generation_errors: list[str] = field(default_factory=list)
    raw_bodies: int = 0
    tampered: int = 0
    operation_seconds: Counter = field(default_factory=Counter)
    semantic_rejections: Counter = field(default_factory=Counter)
    _seen: set = field(default_factory=set)

    def add(self, finding: Finding) -> None:
        self.failure_count += 1
        self.failures_by_kind[finding.kind] += 1
        if finding.key() not in self._seen:
            self._seen.add(finding.key())
            self.failures.append(finding)

    @property
    def ok(self) -> bool:
        return self.failure_count == 0

    def summary(self) -> str:
        lines = [
            f"seed {self.seed}: {self.cases} cases over {len(self.per_operation)} operations "
            f"in {self.seconds:.0f} s ({self.cases / max(self.seconds, 1e-9):.0f}/s); "
            f"{self.failure_count} failures ({len(self.failures)} distinct); "
            f"{self.raw_bodies} with a raw (malformed or odd) body, {self.tampered} with a "
            "tampered signed header",
            "identities: " + ", ".join(f"{k} {v}" for k, v in self.per_identity.most_common()),
            "statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(self.per_status.items())),
        ]
        lines.append("cases per operation:")
        lines += [f"  {n:6d}  {op}" for op, n in sorted(self.per_operation.items())]
        if self.semantic_rejections:
            lines.append(
                "schema-valid data refused for a documented semantic reason (not failures): "
                + ", ".join(f"{op} {n}" for op, n in sorted(self.semantic_rejections.items()))
            )
        if self.failures_by_kind:
            lines.append(
                "failures by kind: "
                + ", ".join(f"{k} {v}" for k, v in self.failures_by_kind.most_common())
            )
        for finding in self.failures[:40]:
            lines.append(f"  FAIL {finding}")
        slow = ", ".join(f"{op} {t:.0f} s" for op, t in self.operation_seconds.most_common(5))
        lines.append(f"slowest operations (generation and requests): {slow}")
        for error in self.generation_errors[:10]:
            lines.append(f"  (no cases) {error}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Signing


class ChefSigner(requests.auth.AuthBase):
    """Signs a prepared request as knife would, over its final method, path and body bytes."""

    def __init__(
        self,
        user: str,
        key: Any,
        version: str = "1.3",
        *,
        slash: bool = False,
        tamper: tuple[str, str | None] | None = None,
    ) -> None:
        self.user = user
        self.key = load_private_pem(key) if isinstance(key, str | bytes) else key
        self.version = version
        self.slash = slash  # request the path with a trailing slash (every route allows one)
        self.tamper = tamper  # (header, new value or None to drop it) after signing

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode("utf-8")
        if self.slash:
            parts = urllib.parse.urlsplit(r.url or "")
            r.url = urllib.parse.urlunsplit(parts._replace(path=parts.path + "/"))
        # the server verifies the path as it reads it: query left out, percent-decoded
        path = urllib.parse.unquote(urllib.parse.urlsplit(r.path_url).path)
        headers = chefauth.sign_request(
            key=self.key,
            user_id=self.user,
            method=r.method or "GET",
            path=path,
            body=body,
            timestamp=chefauth.format_timestamp(time.time()),
            version=self.version,
        )
        for name in list(r.headers):
            if name.lower().startswith("x-ops-authorization-"):
                del r.headers[name]  # the security scheme's generated value
        r.headers.update(headers)
        if self.tamper is not None:
            name, value = self.tamper
            if value is None:
                r.headers.pop(name, None)
            else:
                r.headers[name] = value
        return r


TAMPERED_HEADERS = (
    "X-Ops-Userid",
    "X-Ops-Timestamp",
    "X-Ops-Sign",
    "X-Ops-Content-Hash",
    "X-Ops-Authorization-1",
    "X-Ops-Authorization-2",
    "X-Ops-Server-API-Version",
)


def tamper_value(rng: random.Random) -> str | None:
    """A replacement for a signed header: gone, empty, garbage, or plausible but wrong."""
    return rng.choice(
        [
            None,
            "",
            "version=1.3",
            "algorithm=sha256;version=1.3;extra",
            "algorithm=md5;version=9.9",
            "2012-09-04T23:01:02Z",
            "2999-01-01T00:00:00Z",
            "1",
            "-1",
            "99999999999999999999999",
            "pivotal",
            "nobody",
            "AAAA",
            "=" * 60,
            "\u00e9\u00ff\u00a0",
            "".join(chr(rng.randrange(0x21, 0x7F)) for _ in range(rng.randrange(1, 80))),
        ]
    )


class Identity:
    def __init__(self, name: str, user: str | None, key_pem: bytes | str | None) -> None:
        self.name = name  # "admin", "superuser", "reader", "client", "unsigned"
        self.user = user
        self.key = None if key_pem is None else load_private_pem(key_pem)

    def signer(self, version: str, **options: Any) -> ChefSigner | None:
        if self.user is None or self.key is None:
            return None
        return ChefSigner(self.user, self.key, version, **options)


# ---------------------------------------------------------------------------------------------
# The world the cases run against


class Fixture:
    """The org, its identities and objects, and the names worth aiming generated cases at."""

    def __init__(self, server: Server, directory: Path, *, say: Callable[[str], None]) -> None:
        self.server = server
        self.say = say
        self.fleet = ClientFleet(server, ORG, directory)
        self.superuser = self.fleet.admin
        su = self.superuser
        r = su.post("/organizations", {"name": OTHER_ORG, "full_name": "Other"})
        assert r.status_code == 201, r.text
        self.admin = new_user(su, ADMIN, ORG)
        set_group(su, ORG, "admins", users=(ADMIN,))
        self.reader = new_user(su, READER, ORG)
        for name in NODES:
            self.fleet.add(name, whitelist=WHITELIST)
        r = su.post(f"/organizations/{ORG}/clients", {"name": CLIENT, "create_key": True})
        assert r.status_code == 201, r.text
        self.client_key = r.json()["chef_key"]["private_key"]
        self.identities = {
            "admin": Identity("admin", ADMIN, self.admin.key_pem),
            "superuser": Identity("superuser", "pivotal", server.pivotal_key.read_bytes()),
            "reader": Identity("reader", READER, self.reader.key_pem),
            "client": Identity("client", CLIENT, self.client_key),
            "unsigned": Identity("unsigned", None, None),
        }
        self.fleet.wait_available(*NODES, seconds=60)
        base = f"/organizations/{ORG}"
        for name in SPARE_NODES:
            node = {"name": name, "run_list": ["base"], "automatic": {"ipaddress": "10.0.0.7"}}
            assert su.post(f"{base}/nodes", node).status_code == 201
        r = su.post(f"/users/{ADMIN}/keys", {"name": "k2", "create_key": True})
        assert r.status_code == 201, r.text
        self.replenish()
        # jobs: finished with captured output, failed, and one live for a while
        self.jobs: list[str] = []
        done = self.fleet.run("chef-client", list(NODES), capture_output=True)
        assert done["status"] == "complete", done
        self.jobs.append(done["id"])
        self.jobs.append(self.fleet.run("fail", [NODES[0]], capture_output=True)["id"])
        self.jobs.append(self.fleet.post("sleep", [NODES[1]]))
        self.jobs.append(self.fleet.post("chef-client", ["ghost-node"]))
        self.refresh()

    def replenish(self) -> None:
        """Put back the sacrificial objects fuzzed writes may have removed."""
        su = self.superuser
        base = f"/organizations/{ORG}"
        for name in SPARE_CLIENTS:
            r = su.post(f"{base}/clients", {"name": name, "create_key": True})
            assert r.status_code in (201, 409), r.text
            r = su.post(f"{base}/clients/{name}/keys", {"name": "k2", "create_key": True})
            assert r.status_code in (201, 409), r.text
        for name in SPARE_GROUPS:
            r = su.post(f"{base}/groups", {"groupname": name})
            assert r.status_code in (201, 409), r.text
        for name in SPARE_NODES:
            r = su.post(f"{base}/nodes", {"name": name, "chef_environment": "prod"})
            assert r.status_code in (201, 409), r.text

    def refresh(self) -> None:
        """The names that exist now (jobs the fuzzer created, nodes, clients, ...)."""
        su = self.superuser
        base = f"/organizations/{ORG}"
        r = su.get(f"{base}/pushy/jobs")
        if r.status_code == 200:
            ids = [j["id"] for j in r.json()]
            self.jobs = self.jobs[:4] + [i for i in ids[:40] if i not in self.jobs[:4]]
        names: dict[str, list[str]] = {}
        for kind in ("clients", "nodes", "groups"):
            r = su.get(f"{base}/{kind}")
            names[kind] = sorted(r.json()) if r.status_code == 200 else []
        self.clients = names["clients"]
        self.node_records = names["nodes"]
        self.groups = names["groups"]

    def healthy(self) -> str | None:
        """Why the fuzzing identities cannot work any more (None: they can)."""
        for who in (self.admin, self.reader):
            r = who.get(f"/organizations/{ORG}/pushy/jobs")
            if r.status_code != 200:
                return f"{who.user} GET /pushy/jobs -> {r.status_code} {r.text[:200]}"
        return None

    def close(self) -> None:
        self.fleet.close()


class Bias:
    """Aims a generated case at existing things (or keeps what was generated)."""

    def __init__(self, fixture: Fixture, rng: random.Random) -> None:
        self.fx = fixture
        self.rng = rng

    def _pick(self, options: list[str], share: float) -> str | None:
        if options and self.rng.random() < share:
            return self.rng.choice(options)
        return None

    def names_for(self, param: str, path: str, method: str) -> list[str]:
        fx = self.fx
        writes = method != "GET"
        if param == "org":
            return [ORG] * 12 + [OTHER_ORG]
        if param == "job_id":
            return fx.jobs
        if param == "node":
            return [*NODES, CLIENT, "ghost-node"]
        if param == "channel":
            return ["stdout", "stderr"]
        if param == "index":
            return ["node"]
        if param == "key":
            return list(SPARE_KEYS) if writes else ["default", *SPARE_KEYS]
        if param == "name":
            if path.startswith("/users"):
                return ["nobody"] if writes else [ADMIN, READER, "pivotal"]
            if "/clients/" in path:
                return list(SPARE_CLIENTS) if writes else [*fx.clients]
            if "/groups/" in path:
                return list(SPARE_GROUPS) if writes else [*fx.groups]
            if "/nodes/" in path:
                return list(SPARE_NODES) if writes else [*fx.node_records]
        return []

    def apply(self, case: Any, mode: GenerationMode) -> None:
        op = case.operation
        params = case.path_parameters
        if params:
            for name in list(params):
                if name != "org" and mode == GenerationMode.NEGATIVE:
                    continue  # (it may be the negated part; org cannot be)
                share = 0.9 if name == "org" else 0.6
                choice = self._pick(self.names_for(name, op.path, op.method.upper()), share)
                if choice is not None:
                    params[name] = choice
        body = case.body
        if (
            mode == GenerationMode.POSITIVE
            and op.path.endswith("/pushy/jobs")
            and isinstance(body, dict)
            and self.rng.random() < 0.5
        ):
            body["nodes"] = self.rng.sample([*NODES, "ghost-node"], self.rng.randint(1, 3))
            if self.rng.random() < 0.5:
                body["command"] = self.rng.choice(["chef-client", "fail", "sleep", "nope"])


RAW_SHARE = 0.12
TAMPER_SHARE = 0.05
SLASH_SHARE = 0.05
RAW_CONTENT_TYPES = (
    "application/json",
    "application/json; charset=utf-8",
    "application/json; charset=latin-1",
    "text/plain",
    "application/x-www-form-urlencoded",
    "application/jsonx",
    "*/*",
)


def nested_body(generated: Any, depth: int) -> bytes:
    """The generated body (an object) with an attribute nested ``depth`` levels deep."""
    base = dict(generated) if isinstance(generated, dict) else {"name": "deep"}
    base.pop("automatic", None)
    encoded = json.dumps(base).encode()  # (stdlib: generated bodies hold integers of any size)
    inner = b'{"a":' * depth + b"1" + b"}" * depth
    return encoded[:-1] + (b"," if len(encoded) > 2 else b"") + b'"automatic":' + inner + b"}"


# rolling execution's limits at and past their edges (issue 15)
ROLLING_BODIES = (
    b'{"command": "x", "nodes": ["a"], "max_concurrency": "0%", "max_errors": 1e400}',
    b'{"command": "x", "nodes": ["a"], "max_concurrency": 2147483648}',
    b'{"command": "x", "nodes": ["a"], "max_concurrency": "100%", "max_errors": "100%"}',
    b'{"command": "x", "nodes": ["a"], "max_concurrency": "5%\n", "max_errors": -0.0}',
    b'{"command": "x", "nodes": ["a"], "max_concurrency": [1], "max_errors": {"n": 1}}',
    b'{"command": "x", "nodes": ["a", "b"], "max_concurrency": 1, "max_errors": 0}',
)


def raw_body(rng: random.Random, generated: Any) -> tuple[bytes, str]:
    """A malformed or odd request body (never empty: requests would send the generated one)."""
    try:
        valid = json.dumps(generated).encode()
    except (TypeError, ValueError):
        valid = b"{}"
    choices: list[Callable[[], bytes]] = [
        lambda: b"\xff\xfe\x00not utf-8 \xc3\x28",
        lambda: valid[: max(1, len(valid) // 2)],
        lambda: valid + b"\x00",
        lambda: valid + b" trailing",
        lambda: b"[" * rng.choice((100, 5000, 200_000)),
        lambda: b'{"a":' * 3000 + b"1" + b"}" * 3000,
        lambda: b'{"command": "x", "nodes": ["a"], "run_timeout": 1e400, "quorum": -0.0}',
        lambda: rng.choice(ROLLING_BODIES),
        lambda: b'{"name": "big", "username": "big", "n": 123456789012345678901234567890}',
        lambda: b'{"name": NaN, "x": Infinity, "y": -Infinity}',
        lambda: b'{"name": "a", "name": "b", "nodes": ["a"], "nodes": []}',
        lambda: b'{"name": "\\udc00", "command": "\\ud800x", "nodes": ["\\udfff"]}',
        lambda: rng.choice((b"null", b'"a string"', b"123", b"[]", b"true", b" ", b"{}")),
        lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))),
        lambda: valid.decode("utf-8", "replace").encode("utf-16"),
        lambda: b'{"x": "' + b"y" * rng.choice((70_000, 900_000)) + b'"}',
        lambda: b"x" * 1_000_001,  # over the limit: 413
        lambda: nested_body(generated, rng.choice((50, 99, 101, 260, 900, 1100))),
    ]
    weights = [6, 6, 4, 4, 3, 2, 4, 3, 4, 4, 4, 4, 6, 6, 3, 1, 1, 6]
    body = rng.choices(choices, weights)[0]()
    return body, rng.choice(RAW_CONTENT_TYPES)


# ---------------------------------------------------------------------------------------------
# Our own checks (schemathesis' come from SCHEMATHESIS_CHECKS)


def error_body_problem(status: int, content_type: str, content: bytes) -> str | None:
    """Why an error response's body is not a JSON error object (None when it is)."""
    if status < 400:
        return None
    if not content_type.split(";")[0].strip().lower() == "application/json":
        return f"error {status} with Content-Type {content_type!r}: {content[:120]!r}"
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return f"error {status} with a body that is not JSON: {content[:120]!r}"
    if not isinstance(body, dict) or "error" not in body:
        return f"error {status} without an 'error' member: {content[:120]!r}"
    error = body["error"]
    if isinstance(error, str) or (
        isinstance(error, list) and error and all(isinstance(e, str) for e in error)
    ):
        return None
    return f"error {status} with an 'error' that is not a string or list of strings: {error!r}"


def negatable(definition: dict[str, Any]) -> bool:
    """Whether schemathesis can make a negative case of an operation: it has a body, a query
    parameter, or a path parameter narrower than "any segment" (a segment cannot be negated:
    an empty one or one with a slash would be another route)."""
    if "requestBody" in definition:
        return True
    for param in definition.get("parameters", []):
        if param.get("in") == "query":
            return True
        if param.get("in") == "path" and set(param.get("schema", {})) - {
            "type",
            "minLength",
            "pattern",
        }:
            return True
        if param.get("in") == "path" and param.get("schema", {}).get("pattern") != "^[^/]+$":
            return True
    return False


def semantic_400(status: int, content: bytes) -> bool:
    """A 400 whose error is one of ``SEMANTIC_400``."""
    if status != 400:
        return False
    try:
        error = orjson.loads(content).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return False
    text = " ".join(error) if isinstance(error, list) else str(error)
    return SEMANTIC_400.search(text) is not None


def equivalent(tamper: tuple[str, str | None], version: str) -> bool:
    """A "tampered" header whose new value means what the signed one did: the API version the
    signer sends, or an X-Ops-Sign naming the same version and algorithm (server-protocol.md
    6.1: fields split on ';' then '=', algorithm optional; other parts are ignored, as by
    chef_authn, and knife's own value ends with ';')."""
    name, value = tamper
    if name == "X-Ops-Server-API-Version":
        return value == "1"
    if name != "X-Ops-Sign" or value is None:
        return False
    fields: dict[str, str] = {}
    for part in value.split(";"):
        key, eq, val = part.partition("=")
        if eq:
            fields.setdefault(key.strip(), val.strip())
    algorithm = "sha256" if version == "1.3" else "sha1"
    return fields.get("version") == version and fields.get("algorithm", algorithm) == algorithm


def access_problem(identity: str, method: str, path: str, signed: bool, status: int) -> str | None:
    """An identity that may not do this got a success."""
    if not 200 <= status < 300:
        return None
    if identity == "unsigned" and signed:
        return f"unsigned {method} {path} answered {status}"
    if identity == "reader" and method != "GET" and (method, path) not in READ_ONLY:
        return f"the reader's {method} {path} answered {status}"
    return None


# ---------------------------------------------------------------------------------------------
# The campaign


def weight(op: Any) -> int:
    """Push-job operations (what the appliance is for) get twice the cases."""
    return 2 if "/pushy/" in op.path and "status_feed" not in op.path else 1


class Campaign:
    def __init__(
        self,
        server: Server,
        fixture: Fixture,
        *,
        seed: int,
        say: Callable[[str], None],
        max_seconds: float,
    ) -> None:
        self.server = server
        self.fx = fixture
        self.seed = seed
        self.rng = random.Random(seed)
        self.bias = Bias(fixture, self.rng)
        self.say = say
        self.report = Report(seed)
        self.deadline = time.monotonic() + max_seconds
        self.session = requests.Session()
        self.schema = schemathesis.openapi.from_url(f"{server.url}/pushy/openapi.json")
        # the signer authenticates each case: no generated (or negated) X-Ops-Authorization-1
        # unknown query parameters are ignored, as by most servers: not a negative case
        self.schema.config.generation.update(
            with_security_parameters=False, allow_extra_parameters=False
        )
        self.operations = [result.ok() for result in self.schema.get_all_operations()]
        self.signed = {
            (op.method.upper(), op.path): op.definition.raw.get("security") != []
            for op in self.operations
        }
        self._last_progress = time.monotonic()
        self.barren: set[tuple[str, str]] = set()  # (operation, mode) that yields no cases

    # one case ---------------------------------------------------------------------------
    def pick_identity(self) -> Identity:
        r = self.rng.random()
        name = (
            "admin"
            if r < 0.62
            else "superuser"
            if r < 0.74
            else "reader"
            if r < 0.86
            else "client"
            if r < 0.92
            else "unsigned"
        )
        return self.fx.identities[name]

    def one(self, case: Any, mode: GenerationMode) -> None:
        op = case.operation
        method, path = op.method.upper(), op.path
        label = f"{method} {path}"
        self.bias.apply(case, mode)
        identity = self.pick_identity()
        version = self.rng.choice(["1.3"] * 8 + ["1.1", "1.0"])
        headers: dict[str, str] = {}
        if self.rng.random() < 0.08:
            headers["Accept"] = self.rng.choice(ACCEPTS)
        is_feed = "status_feed" in path
        timeout = FEED_SECONDS if is_feed else REQUEST_SECONDS
        report = self.report
        report.cases += 1
        report.per_operation[label] += 1
        report.per_identity[identity.name] += 1
        kwargs: dict[str, Any] = {"timeout": timeout}
        tamper = None
        if self.rng.random() < TAMPER_SHARE:
            tamper = (self.rng.choice(TAMPERED_HEADERS), tamper_value(self.rng))
            report.tampered += 1
        slash = self.rng.random() < SLASH_SHARE
        raw = None
        if "requestBody" in op.definition.raw and self.rng.random() < RAW_SHARE:
            raw, content_type = raw_body(self.rng, case.body)
            kwargs["data"] = raw  # sent instead of the generated body (requests prefers data)
            headers["Content-Type"] = content_type
            report.raw_bodies += 1
        signer = identity.signer(version, slash=slash, tamper=tamper)
        if signer is not None:
            kwargs["auth"] = signer
        try:
            response = case.call(
                base_url=self.server.url, session=self.session, headers=headers, **kwargs
            )
        except Exception as exc:  # a refused or dropped connection, a timeout
            report.add(
                Finding("transport", label, identity.name, None, f"{type(exc).__name__}: {exc}")
            )
            self._after_case()
            return
        status = response.status_code
        report.per_status[status] += 1
        content_type = ",".join(response.headers.get("content-type", []))
        problem = error_body_problem(status, content_type, response.content)
        if problem:
            report.add(Finding("error_not_json", label, identity.name, status, problem))
        problem = access_problem(
            identity.name, method, path, self.signed.get((method, path), True), status
        )
        if problem:
            report.add(Finding("access", label, identity.name, status, problem))
        if (
            tamper is not None
            and signer is not None
            and not equivalent(tamper, version)
            and self.signed.get((method, path), True)
            and 200 <= status < 300
            and not (tamper[0] == "X-Ops-Server-API-Version" and version != "1.3")
        ):
            report.add(
                Finding("tamper_accepted", label, identity.name, status, f"{tamper} accepted")
            )
        checks = list(BASE_CHECKS)
        if raw is not None:
            pass  # the generated body was not sent: no positive/negative verdict
        elif mode == GenerationMode.NEGATIVE:
            checks.append(negative_data_rejection)
        elif (
            identity.name in SIGNED_AS_SOMEONE_WHO_MAY
            and not headers
            and tamper is None
            and not path.endswith("/ws")  # (the websocket route needs an upgrade)
        ):
            checks.append(positive_data_acceptance)
        failures: list[BaseException] = []
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except schemathesis.errors.IncorrectUsage:
            raise
        except BaseExceptionGroup as group:
            failures.extend(group.exceptions)
        except AssertionError as failure:
            failures.append(failure)
        except Exception as exc:  # the checks themselves broke (not a verdict on the server)
            report.add(Finding("harness", label, identity.name, status, repr(exc)[:300]))
        for failure in failures:
            if getattr(failure, "code", "") == "ST202" and semantic_400(status, response.content):
                report.semantic_rejections[label] += 1
                continue
            report.add(self._finding(failure, label, identity, status, response))
        self._after_case()

    def _finding(
        self, failure: BaseException, label: str, identity: Identity, status: int, response: Any
    ) -> Finding:
        kind = getattr(failure, "code", None) or type(failure).__name__
        title = getattr(failure, "title", "") or ""
        message = getattr(failure, "message", None) or str(failure)
        body = response.content[:300].decode("utf-8", "replace")
        request = response.request
        sent = request.body or b""
        if isinstance(sent, bytes):
            sent = sent.decode("utf-8", "replace")
        reproduce = f"{request.method} {request.url} body={str(sent)[:300]!r} -> {body!r}"
        return Finding(f"{kind} {title}".strip(), label, identity.name, status, message, reproduce)

    def _after_case(self) -> None:
        report = self.report
        if report.cases % REPLENISH_EVERY == 0:
            self.fx.replenish()
            self.fx.refresh()
            why = self.fx.healthy()
            if why:
                report.add(Finding("fixture", "-", "-", None, why))
        if time.monotonic() - self._last_progress > 10:
            self._last_progress = time.monotonic()
            self.say(
                f"{report.cases} cases, {report.failure_count} failures "
                f"({len(report.failures)} distinct)"
            )

    # the loop -----------------------------------------------------------------------------
    def run_operation(self, op: Any, mode: GenerationMode, examples: int, seed: int) -> int:
        """Run up to ``examples`` cases of ``op``; how many ran."""
        before = self.report.cases
        if (op.label, mode.value) in self.barren:
            return 0
        if mode == GenerationMode.NEGATIVE and not negatable(op.definition.raw):
            self.barren.add((op.label, mode.value))
            return 0
        try:
            strategy = op.as_strategy(generation_mode=mode)
        except Exception as exc:
            self.barren.add((op.label, mode.value))
            self.report.generation_errors.append(f"{op.label} {mode.value}: {exc}"[:300])
            return 0

        @hypothesis.seed(seed)
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            if time.monotonic() > self.deadline:
                return
            self.one(case, mode)

        started = time.monotonic()
        try:
            run()
        except (hypothesis.errors.Unsatisfiable, schemathesis.errors.SchemathesisError) as exc:
            # e.g. a negative case of an operation whose only inputs are path segments
            self.barren.add((op.label, mode.value))
            self.report.generation_errors.append(f"{op.label} {mode.value}: {exc}"[:300])
        finally:
            self.report.operation_seconds[f"{op.label} {mode.value}"] += time.monotonic() - started
        return self.report.cases - before

    def probe_method(self) -> None:
        """A method the document does not list for a path: 405 with a JSON error, whoever asks."""
        templates = sorted({op.path for op in self.operations})
        template = self.rng.choice(templates)
        documented = {op.method.upper() for op in self.operations if op.path == template}
        method = self.rng.choice(
            [m for m in ("GET", "POST", "PUT", "DELETE", "PATCH") if m not in documented]
        )
        path = template
        for name in re.findall(r"{([^}]+)}", template):
            options = self.bias.names_for(name, template, "GET") or ["x"]
            path = path.replace("{" + name + "}", urllib.parse.quote(self.rng.choice(options)))
        identity = self.pick_identity()
        label = f"{method} {template} (undocumented)"
        report = self.report
        report.cases += 1
        report.per_operation[label] += 1
        report.per_identity[identity.name] += 1
        body = b'{"name": "x"}' if method in ("POST", "PUT", "PATCH") else None
        headers = {"Content-Type": "application/json"} if body else {}
        try:
            r = self.session.request(
                method,
                self.server.url + path,
                data=body,
                headers=headers,
                auth=identity.signer("1.3"),
                timeout=REQUEST_SECONDS,
            )
        except requests.RequestException as exc:
            report.add(Finding("transport", label, identity.name, None, repr(exc)))
            return
        report.per_status[r.status_code] += 1
        problem = error_body_problem(r.status_code, r.headers.get("content-type", ""), r.content)
        if r.status_code != 405:
            problem = f"{method} {path}: {r.status_code}, not 405: {r.content[:200]!r}"
        if problem:
            report.add(Finding("undocumented_method", label, identity.name, r.status_code, problem))
        self._after_case()

    def run(self, cases: int, *, operations: list[str] | None = None) -> Report:
        started = time.monotonic()
        ops = [op for op in self.operations if operations is None or op.label in set(operations)]
        modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
        rounds = 0
        while self.report.cases < cases and time.monotonic() < self.deadline and rounds < 50:
            left = cases - self.report.cases
            # rounded down, so that a short run still reaches every operation
            per = max(1, left // (sum(map(weight, ops)) * len(modes)))
            ran = 0
            for n, op in enumerate(self.rng.sample(ops, len(ops))):
                for mode in modes:
                    if self.report.cases >= cases or time.monotonic() > self.deadline:
                        break
                    seed = self.rng.randrange(2**32)
                    ran += self.run_operation(op, mode, per * weight(op), seed)
                if self.report.cases < cases and operations is None and n % 4 == 0:
                    self.probe_method()
                    ran += 1
            rounds += 1
            if ran == 0:
                break
        self.report.seconds = time.monotonic() - started
        return self.report


def final_checks(server: Server, fixture: Fixture, report: Report) -> None:
    """The server survived: its process runs, it answers, and a real node still runs a job."""
    if server.proc is None or server.proc.poll() is not None:
        report.add(Finding("crash", "-", "-", None, "the server process exited"))
        return
    why = fixture.healthy()
    if why:
        report.add(Finding("fixture", "-", "-", None, why))
    # a crash off the request path (a job supervisor, the reactor) is no 5xx: read the log
    errors = [
        line
        for line in server.log_path.read_text(errors="replace").splitlines()
        if " ERROR " in line or " CRITICAL " in line
    ]
    for line in errors[:20]:
        report.add(Finding("server_log", "-", "-", None, line[:300]))
    try:
        wait_for(
            lambda: fixture.fleet.states().get(NODES[0]) == "available",
            30,
            what=f"{NODES[0]} available after the fuzz",
        )
        job = fixture.fleet.run("chef-client", [NODES[0]], capture_output=True)
        if job["status"] != "complete":
            report.add(Finding("liveness", "-", "-", None, f"a job after the fuzz: {job}"))
    except AssertionError as exc:
        report.add(Finding("liveness", "-", "-", None, str(exc)[:500]))


@contextlib.contextmanager
def fuzz_world(directory: Path, say: Callable[[str], None]) -> Iterator[tuple[Server, Fixture]]:
    """A server with the fuzzing fixture, both torn down at the end."""
    directory.mkdir(parents=True, exist_ok=True)
    with Server(
        directory / "state",
        voting_timeout=2,
        wait_complete_time=0.5,
        keep_alive_time=1,
        org_feed_expiration=30,
    ) as server:
        fixture = Fixture(server, directory / "clients", say=say)
        try:
            yield server, fixture
        finally:
            fixture.close()


def fuzz(
    cases: int,
    seed: int,
    *,
    directory: Path,
    say: Callable[[str], None] = lambda _text: None,
    max_seconds: float = 3600.0,
    operations: list[str] | None = None,
) -> Report:
    """Run a whole campaign of ``cases`` cases on a fresh server; the report."""
    with fuzz_world(directory, say) as (server, fixture):
        campaign = Campaign(server, fixture, seed=seed, say=say, max_seconds=max_seconds)
        report = campaign.run(cases, operations=operations)
        final_checks(server, fixture, report)
        if not report.ok:
            say(f"server log: {server.log_path}")
        return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.campaigns.fuzz_rest", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--cases", type=int, default=10_000, help="cases in all")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=2 * 3600)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--operation", action="append", default=None, help='only these, e.g. "GET /users"'
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**31)

    def say(text: str) -> None:
        print(f"[fuzz_rest] {text}", file=sys.stderr, flush=True)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fuzz_rest-"))
    say(f"seed {seed}: {args.cases} cases; workdir {workdir}")
    try:
        report = fuzz(
            args.cases,
            seed,
            directory=workdir,
            say=say,
            max_seconds=args.max_seconds,
            operations=args.operation,
        )
    except Exception:
        traceback.print_exc()
        say(f"seed {seed}: the campaign itself failed")
        return 2
    say(report.summary())
    say(f"seed {seed}: {'OK' if report.ok else 'FAILED'}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
