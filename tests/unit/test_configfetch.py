"""The config fetch's decision (core.configfetch): CURVE key registration and session-key rotation."""

from __future__ import annotations

from appliance.core import configfetch, records
from appliance.core.state import State, apply

ORG = "acme"
CCPK_A = "a" * 40
CCPK_B = "b" * 40
OLD, NEW = b"o" * 32, b"n" * 32


def state_with(node: str, *, key: bytes | None = None, ccpk: str | None = None) -> State:
    state = State()
    if key is not None:
        apply(state, records.session_key(ORG, node, key, t=0.0, grace=60.0))
    if ccpk is not None:
        apply(state, records.ccpk(ORG, node, ccpk))
    return state


def decide(state: State, node: str, principal: tuple[str, str], ccpk: str | None, curve=True):
    return configfetch.decide(
        state,
        ORG,
        node,
        principal=principal,
        ccpk=ccpk,
        curve=curve,
        fresh_key=NEW,
        now=5.0,
        grace=60.0,
    )


def test_missing_ccpk_is_400_with_curve_and_fine_without():
    assert decide(State(), "n1", ("client", "n1"), None) == configfetch.Refused(400, "Missing ccpk")
    granted = decide(State(), "n1", ("client", "n1"), None, curve=False)
    assert isinstance(granted, configfetch.Granted) and granted.session_key == NEW
    assert [r["type"] for r in granted.records] == ["session_key"]


def test_another_nodes_curve_key_is_refused():
    state = state_with("n2", key=OLD, ccpk=CCPK_A)
    assert decide(state, "n1", ("client", "n1"), CCPK_A) == configfetch.Refused(401, "Bad ccpk")


def test_the_nodes_own_fetch_registers_its_key_and_rotates_its_session_key():
    state = state_with("n1", key=OLD, ccpk=CCPK_A)
    granted = decide(state, "n1", ("client", "n1"), CCPK_B)
    assert granted.session_key == NEW
    assert granted.records == [
        records.ccpk(ORG, "n1", CCPK_B),
        records.session_key(ORG, "n1", NEW, t=5.0, grace=60.0),
    ]


def test_a_known_key_is_not_registered_again():
    granted = decide(state_with("n1", key=OLD, ccpk=CCPK_A), "n1", ("client", "n1"), CCPK_A)
    assert [r["type"] for r in granted.records] == ["session_key"]


def test_a_superusers_fetch_keeps_the_nodes_key_and_registers_nothing():
    granted = decide(state_with("n1", key=OLD, ccpk=CCPK_A), "n1", ("user", "pivotal"), CCPK_B)
    assert granted == configfetch.Granted(OLD, [])


def test_a_node_without_a_session_key_gets_one_whoever_fetches():
    granted = decide(State(), "n1", ("user", "pivotal"), CCPK_B)
    assert granted.session_key == NEW
    assert [r["type"] for r in granted.records] == ["session_key"]  # a user registers no ccpk
