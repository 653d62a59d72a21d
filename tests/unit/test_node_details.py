"""What our client tells of a node's end or refusal (issue 15): the exit status, the signal,
the reason. Recorded with the job (a ``detail`` change, replayed like any other) and shown as
``node_details`` in GET jobs/ID; original clients send none, and their jobs look as before."""

from __future__ import annotations

import pytest

from appliance.core import render, wire
from tests.unit.test_jobfsm import Run, _check_replay  # noqa: F401


def ran(outcome: str = "failed", **body: object) -> Run:
    run = Run(("a", "b"))
    run.start()
    for name in ("a", "b"):
        run.tick().msg(name, "ack_commit")
    run.tick().msg("a", "ack_run")
    run.tick().msg("a", outcome, **body)
    return run


def test_an_exit_status_is_recorded_and_shown() -> None:
    run = ran("failed", exit_status=3)
    assert run.job.details == {"a": {"exit_status": 3}}
    shown = render.job_detail(run.job)
    assert shown["node_details"] == {"a": {"exit_status": 3, "signal": None, "reason": None}}
    assert list(shown)[-1] == "node_details"


def test_a_signal_and_a_refusal_reason() -> None:
    run = ran("failed", signal="SIGKILL")
    run.tick().msg("b", "nack_run", reason="Run refused: the client is idle")
    assert run.job.details == {
        "a": {"signal": "SIGKILL"},
        "b": {"reason": "Run refused: the client is idle"},
    }


def test_an_original_client_says_nothing_and_the_job_looks_as_before() -> None:
    run = ran("succeeded", stdout="", stderr="")
    assert run.job.details == {}
    assert "node_details" not in render.job_detail(run.job)
    assert not any(c[0] == "detail" for _t, changes in run.log for c in changes)


@pytest.mark.parametrize(
    ("body", "kept"),
    [
        ({"exit_status": "3"}, None),
        ({"exit_status": True}, None),
        ({"exit_status": 2**31}, None),
        ({"exit_status": -1}, {"exit_status": -1}),
        ({"signal": 9}, None),
        ({"reason": ""}, None),
        ({"reason": ["x"]}, None),
        ({"reason": "r" * 5000}, {"reason": "r" * 1000}),
        ({"signal": "S" * 100, "exit_status": 1}, {"exit_status": 1, "signal": "S" * 32}),
    ],
)
def test_odd_details_are_dropped_or_cut(body: dict, kept: dict | None) -> None:
    assert wire.node_details(body) == kept
    run = ran("failed", **body)
    assert run.job.details == ({} if kept is None else {"a": kept})


def test_only_the_first_word_of_a_node_counts() -> None:
    run = ran("failed", exit_status=3)
    run.tick().msg("a", "failed", exit_status=4)  # a stray repeat changes nothing
    assert run.job.details == {"a": {"exit_status": 3}}


def test_our_client_cannot_send_a_field_the_server_does_not_know() -> None:
    with pytest.raises(TypeError, match="unknown fields"):
        wire.node_message(
            node="n",
            client="h",
            org="o",
            type="failed",
            sequence=1,
            t=0.0,
            incarnation="i",
            job_id="j",
            exit_code=3,
        )
