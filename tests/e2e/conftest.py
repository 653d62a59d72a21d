"""Fixtures for end-to-end tests: a real server process per test (or module)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from tests.support import Server, WireNode, setup_org


@pytest.fixture
def server(tmp_path) -> Iterator[Server]:
    srv = Server(tmp_path / "state")
    srv.start()
    try:
        yield srv
    finally:
        srv.kill()


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
