"""Rolling execution (issue 15, ``core.rollout`` through ``core.jobfsm``): the window, the
error threshold, each node's own run timeout, and a replayed job that goes on where it was.
Every job driven here is also replayed from its log and must come out identical
(``test_jobfsm``'s fixture)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core import jobfsm, rollout
from appliance.core.jobfsm import Rehab, Send
from tests.unit.test_jobfsm import T0, Run, _check_replay, job_complete  # noqa: F401

NODES = ("n1", "n2", "n3", "n4", "n5")


def runs_sent(step: jobfsm.Step) -> list[str]:
    return [e.node for e in step.effects if isinstance(e, Send) and e.body["type"] == "run"]


def committed(run: Run) -> jobfsm.Step:
    """Start the job and let every node commit; returns the step that reached the quorum."""
    run.start()
    step = jobfsm.Step()
    for name in run.job.nodes:
        step = run.tick().msg(name, "ack_commit")
    return step


def live_started(job: jobfsm.Job) -> set[str]:
    return {n for n in job.dispatched if job.nodes[n] in ("ready", "running")}


def test_the_window_starts_nodes_in_request_order_and_slides() -> None:
    run = Run(NODES, max_concurrency=2)
    assert runs_sent(committed(run)) == ["n1", "n2"]
    assert run.job.status == "running" and set(run.job.dispatched) == {"n1", "n2"}
    run.tick().msg("n1", "ack_run")
    run.tick().msg("n2", "ack_run")
    assert runs_sent(run.tick().msg("n2", "succeeded")) == ["n3"]
    assert runs_sent(run.tick().msg("n1", "failed")) == ["n4"]  # no max_errors: it goes on
    for name in ("n3", "n4"):
        run.tick().msg(name, "ack_run")
    assert runs_sent(run.tick().msg("n3", "succeeded")) == ["n5"]
    run.tick().msg("n5", "ack_run")
    run.tick().msg("n4", "succeeded")
    last = run.tick().msg("n5", "succeeded")
    assert runs_sent(last) == [] and run.job.status == "complete"
    assert run.job.stopped_by is None


def test_a_percentage_is_a_share_of_the_nodes_rounded_up() -> None:
    run = Run(NODES, max_concurrency="30%")  # 1.5 -> 2
    assert runs_sent(committed(run)) == ["n1", "n2"]


def test_a_plain_job_sends_run_to_every_node_and_records_no_dispatch() -> None:
    run = Run(NODES)
    assert runs_sent(committed(run)) == list(NODES)
    assert run.job.dispatched == {}


@settings(max_examples=60, deadline=None)
@given(
    window=st.integers(min_value=1, max_value=6),
    outcomes=st.lists(st.sampled_from(["succeeded", "failed", "nack_run", "down"]), min_size=7),
    picks=st.lists(st.integers(min_value=0, max_value=100), min_size=30, max_size=30),
)
def test_the_window_is_never_exceeded_whatever_happens(
    window: int, outcomes: list[str], picks: list[int]
) -> None:
    names = [f"n{i}" for i in range(7)]
    run = Run(names, max_concurrency=window)
    committed(run)
    started: list[str] = list(run.job.dispatched)
    for i, pick in enumerate(picks):
        live = sorted(live_started(run.job))
        if not live:
            break
        name = live[pick % len(live)]
        outcome = outcomes[i % len(outcomes)]
        if outcome == "down":
            step = run.tick().down(name)
        elif run.job.nodes[name] == "ready" and outcome != "nack_run":
            step = run.tick().msg(name, "ack_run")
        else:
            step = run.tick().msg(name, outcome)
        started += runs_sent(step)
        assert len(live_started(run.job)) <= window
    assert started == [n for n in names if n in run.job.dispatched]  # request order
    assert len(started) == len(set(started))  # nobody gets run twice


def test_max_errors_stops_the_rollout_and_aborts_the_nodes_not_started() -> None:
    run = Run(NODES, max_concurrency=2, max_errors=0)
    committed(run)
    run.tick().msg("n1", "ack_run")
    run.tick().msg("n2", "ack_run")
    step = run.tick().msg("n1", "failed")
    assert runs_sent(step) == []
    assert {e.node for e in step.effects if isinstance(e, Rehab)} == {"n3", "n4", "n5"}
    assert run.job.stopped_by == rollout.STOPPED_BY_ERRORS
    assert [run.job.nodes[n] for n in NODES] == ["failed", "running"] + ["aborted"] * 3
    assert run.job.status == "running"  # n2 finishes its run
    assert ("rollout_stopped", {"reason": "max_errors"}) in run.events()
    run.tick().msg("n2", "succeeded")
    assert run.job.status == "aborted"
    assert run.events()[-1] == ("job_complete", {"status": "aborted", "reason": "max_errors"})


def test_max_errors_counts_failed_crashed_and_timed_out_past_the_limit() -> None:
    run = Run(NODES, max_concurrency=1, max_errors="40%", run_timeout=10)  # 2 errors allowed
    committed(run)
    run.tick().msg("n1", "ack_run")
    run.tick().msg("n1", "failed")  # 1
    run.tick().down("n2")  # run sent, never acked: crashed, 2
    assert run.job.stopped_by is None and run.job.nodes["n3"] == "ready"
    run.tick().msg("n3", "ack_run")
    run.now = run.job.dispatched["n3"] + 10
    run.run_timeout()  # n3 timed out: 3 errors > 2
    assert run.job.nodes["n3"] == "timed_out"
    assert run.job.stopped_by == "max_errors" and run.job.status == "aborted"
    assert [run.job.nodes[n] for n in ("n4", "n5")] == ["aborted", "aborted"]


def test_max_errors_without_a_window_starts_everyone_and_ends_aborted() -> None:
    run = Run(("a", "b", "c"), max_errors=1)
    assert runs_sent(committed(run)) == ["a", "b", "c"]
    for name in ("a", "b", "c"):
        run.tick().msg(name, "ack_run")
    run.tick().msg("a", "failed")
    run.tick().msg("b", "failed")
    assert run.job.stopped_by == "max_errors" and run.job.status == "running"
    run.tick().msg("c", "succeeded")
    assert run.job.status == "aborted" and run.job.nodes["c"] == "succeeded"


def test_each_node_has_its_own_run_timeout_in_a_window() -> None:
    run = Run(("a", "b", "c"), max_concurrency=1, run_timeout=10)
    committed(run)
    sent_a = run.job.dispatched["a"]
    assert jobfsm.running_deadline(run.job) == sent_a + 10
    run.tick(4).msg("a", "ack_run")
    run.tick(3).msg("a", "succeeded")  # b starts 7 s after a
    assert jobfsm.running_deadline(run.job) == run.job.dispatched["b"] + 10 == sent_a + 17
    run.now = sent_a + 16
    assert run.run_timeout().changes == []  # not late yet: nothing happens
    run.now = sent_a + 17
    step = run.run_timeout()
    assert run.job.nodes["b"] == "timed_out" and runs_sent(step) == ["c"]
    assert ("run_complete", {"node": "b", "status": "timed_out"}) in run.events()
    assert run.job.status == "running"


def test_a_replayed_job_goes_on_where_it_was() -> None:
    """A restart rebuilds the job from its log: no window state survives but the durable
    fields, and the next node started is the one the live job would have started."""
    run = Run(NODES, max_concurrency=2)
    committed(run)
    run.tick().msg("n1", "ack_run")
    run.tick().msg("n1", "succeeded")  # n3 started
    replayed = run.replayed()
    assert replayed == run.job and "_rollout" not in vars(replayed)
    step = jobfsm.on_message(replayed, "n2", "succeeded", {}, run.now + 1)
    assert runs_sent(step) == ["n4"]  # n2 was sent run before the restart; n3 too


def test_a_node_lost_across_a_restart_frees_its_slot_for_the_next() -> None:
    """A step that ends a node also starts the next one, in the same record: a replayed
    rollout never has a free slot to fill. A node that comes back from a restart without the
    job (it ended meanwhile) is crashed, and that step starts the next node."""
    run = Run(NODES, max_concurrency=2)
    committed(run)
    job = run.replayed()
    step = jobfsm.on_node_lost_job(job, "n1", run.now + 1)
    assert job.nodes["n1"] == "crashed" and runs_sent(step) == ["n3"]
    assert live_started(job) == {"n2", "n3"}


def test_abort_mid_rollout_aborts_waiting_and_running_nodes() -> None:
    run = Run(NODES, max_concurrency=2)
    committed(run)
    run.tick().msg("n1", "ack_run")
    step = run.tick().abort()
    assert {e.node for e in step.effects if isinstance(e, Rehab)} == set(NODES)
    assert run.job.status == "aborted" and run.job.stopped_by is None
    assert run.events()[-1] == job_complete("aborted")


def test_the_start_event_shows_the_limits() -> None:
    run = Run(("a",), max_concurrency="50%", max_errors=0)
    run.start()
    start = run.events()[0][1]
    assert start["max_concurrency"] == "50%" and start["max_errors"] == 0
