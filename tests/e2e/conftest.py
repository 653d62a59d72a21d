"""Fixtures for end-to-end tests: a real server process per test (or module).

A module overrides ``server`` with its own settings (``server = server_fixture(...)``); the
``org``, ``node1`` and ``fleet`` fixtures then use that server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from tests.e2e.helpers import Fleet
from tests.support import Server, WireNode, setup_org


@pytest.fixture
def server(tmp_path) -> Iterator[Server]:
    with Server(tmp_path / "state") as srv:
        yield srv


@pytest.fixture(scope="module")
def cluster():
    """A real PostgreSQL (Debian's server, as ``scripts/test`` installs it) for the module."""
    from appliance.bench.pgcluster import PgCluster

    pg = PgCluster().start()
    try:
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def zctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def org(server):
    """(superuser client, {node: private key}) for org 'testorg' with nodes node1..node3."""
    return setup_org(server, "testorg", ("node1", "node2", "node3"))


@pytest.fixture
def node1(server, org, zctx) -> Iterator[WireNode]:
    node = WireNode(server, "testorg", "node1", org[1]["node1"], ctx=zctx)
    node.connect()
    node.join()
    yield node
    node.close()


@pytest.fixture
def fleet(server, zctx) -> Iterator[Fleet]:
    """Organizations and joined ``Node``s for one test, closed at its end."""
    f = Fleet(server, zctx)
    try:
        yield f
    finally:
        f.close()
