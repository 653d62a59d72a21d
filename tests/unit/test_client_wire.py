"""What the client puts on the wire, byte for byte (client-knife.md §A.2 test vector)."""

from __future__ import annotations

import pytest

from appliance.client import agent as agent_module
from appliance.client.channel import Connection
from appliance.core.keys import generate_rsa
from tests.support import make_agent
from tests.unit.vectors import (
    INCARNATION,
    KEY,
    VECTOR_ABORTED,
    VECTOR_HEARTBEAT,
    VECTOR_SUCCEEDED,
    T,
)


class Dealer:
    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []

    def send_nowait(self, frames: list[bytes]) -> bool:
        self.sent.append(frames)
        return True

    def close(self) -> None:
        pass


@pytest.fixture
def client(tmp_path, monkeypatch):
    rsa = generate_rsa(2048)
    agent = make_agent(tmp_path, rsa, org="myorg", node="node1", hostname="host1")
    agent.incarnation = INCARNATION
    monkeypatch.setattr(agent_module.time, "time", lambda: T)
    conn = Connection(
        config={},
        session_key=KEY,
        server_key=rsa.public_key(),
        incarnation="s",
        interval=1.0,
        legacy=False,
        dealer=Dealer(),
    )
    yield agent, conn
    agent.ctx.destroy(linger=0)


def test_heartbeat_and_results_match_the_reference_client_byte_for_byte(client):
    agent, conn = client
    agent.send(conn, "heartbeat", None, job_state="idle")
    agent.send(conn, "succeeded", "abc123", stdout="out\n", stderr="")
    agent.send(conn, "aborted", None)
    assert conn.dealer.sent == [
        [
            b"Version:2.0;SigningMethod:hmac_sha256;Signature:7ito3LsF+G7RCJPkvEHnqk81R8w03uL6PfaKHOdMlgc=",
            VECTOR_HEARTBEAT,
        ],
        [
            b"Version:2.0;SigningMethod:hmac_sha256;Signature:qhmza9dFCGeUN9v1oLjFHC866yHeAy7zYso/L8+nu7A=",
            VECTOR_SUCCEEDED,
        ],
        [
            b"Version:2.0;SigningMethod:hmac_sha256;Signature:aWm4zbOcraWtX2CwAVO8uPj0i/ygAv8j+MGbGxwDVYA=",
            VECTOR_ABORTED,
        ],
    ]
