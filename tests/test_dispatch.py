"""The dispatcher that runs ``'message'`` and ``'connection'`` listeners.

``submit`` runs jobs in submission order in a few reused greenlets
(runners); a job that blocks keeps its runner and the jobs behind it go on
in another; a job that raises is reported and its runner goes on; idle
runners are kept for reuse, at most ``MAX_IDLE`` of them; ``submit_listener``
tells the emitter's ``on_listener_failed`` hook about a listener that raised.
What the tests look at is what a job sees: the order jobs run in, the
greenlet each runs in (``gevent.getcurrent()``), and what the hub is told.
"""

from __future__ import annotations

import gevent
from gevent.event import Event

from geventfork._dispatch import MAX_IDLE, submit, submit_listener
from helpers import TIMEOUT, hub_errors, wait_until


def test_jobs_run_soon_in_submission_order_not_in_the_submitter() -> None:
    ran, runners = [], set()

    def job(n: int) -> None:
        ran.append(n)
        runners.add(gevent.getcurrent())

    for n in range(100):
        submit(job, n)
    assert ran == []  # later, not inside submit()
    wait_until(lambda: len(ran) == 100, "every job to run")
    assert ran == list(range(100))
    assert gevent.getcurrent() not in runners


def test_jobs_take_their_arguments() -> None:
    got = []
    submit(lambda *args: got.append(args), 1, "two", None)
    wait_until(lambda: got, "the job to run")
    assert got == [(1, "two", None)]


def test_a_blocking_job_hands_the_queue_to_another_runner() -> None:
    gate, started, finished = Event(), [], []

    def blocker() -> None:
        started.append(("blocker", gevent.getcurrent()))
        gate.wait(TIMEOUT)
        finished.append("blocker")

    def quick(n: int) -> None:
        started.append((n, gevent.getcurrent()))
        finished.append(n)

    submit(blocker)
    for n in range(3):
        submit(quick, n)
    wait_until(lambda: len(finished) == 3, "the jobs behind the blocked one to run")
    assert [name for name, _ in started] == ["blocker", 0, 1, 2]  # started in order
    assert finished == [0, 1, 2]  # while the first still blocks
    assert started[0][1] not in {runner for _, runner in started[1:]}
    gate.set()
    wait_until(lambda: "blocker" in finished, "the blocked job to finish")


def test_a_job_that_blocks_after_submitting_more_does_not_hold_them_up() -> None:
    # The runner itself submits (as a listener emitting an event does), then blocks.
    gate, ran = Event(), []

    def parent() -> None:
        submit(ran.append, "child")
        gate.wait(TIMEOUT)
        ran.append("parent done")

    submit(parent)
    wait_until(lambda: ran == ["child"], "the job submitted from inside a job to run")
    gate.set()
    wait_until(lambda: ran == ["child", "parent done"], "the blocked job to finish")


def test_a_job_that_raises_is_reported_and_its_runner_goes_on() -> None:
    runners = []

    def failing() -> None:
        runners.append(gevent.getcurrent())
        raise ValueError("job failed on purpose")

    def after() -> None:
        runners.append(gevent.getcurrent())

    with hub_errors() as reported:
        submit(failing)
        submit(after)
        wait_until(lambda: len(runners) == 2, "the job after the failed one to run")
    assert [str(error) for error in reported] == ["job failed on purpose"]
    assert runners[0] is runners[1]  # the same runner took the next job


def _blocked_runners(count: int, gate: Event) -> set:
    """Submit ``count`` jobs that block on ``gate`` together; return their runners."""
    runners: set = set()

    def job() -> None:
        runners.add(gevent.getcurrent())
        gate.wait(TIMEOUT)

    for _ in range(count):
        submit(job)
    wait_until(lambda: len(runners) == count, f"{count} jobs blocked at once")
    return runners


def test_idle_runners_are_reused_up_to_max_idle() -> None:
    # More jobs blocked at once than runners are kept: every idle runner is
    # taken, and new ones are started for the rest.
    count = MAX_IDLE + 5
    first_gate, second_gate = Event(), Event()
    first = _blocked_runners(count, first_gate)
    first_gate.set()
    wait_until(
        lambda: sum(not runner.dead for runner in first) == MAX_IDLE,
        f"all but {MAX_IDLE} runners to end once idle",
    )
    second = _blocked_runners(count, second_gate)
    second_gate.set()
    assert len(second & first) == MAX_IDLE  # the kept ones, reused
    assert all(runner.dead for runner in first - second)


def test_submit_listener_reports_a_raising_listener_to_the_emitter() -> None:
    class Emitter:
        def __init__(self, reported_here: bool) -> None:
            self.failed: list = []
            self.reported_here = reported_here

        def on_listener_failed(self, event, listener, args, exc) -> bool:
            self.failed.append((event, listener.__name__, args, str(exc)))
            return self.reported_here

    def listener(n: int) -> None:
        raise RuntimeError(f"listener failed with {n}")

    ran = []
    quiet, loud = Emitter(reported_here=True), Emitter(reported_here=False)
    with hub_errors() as reported:
        submit_listener(quiet, "message", (listener, ran.append), (1,))
        submit_listener(loud, "connection", (listener,), (2,))
        wait_until(lambda: loud.failed, "the second emitter to be told")
    assert quiet.failed == [("message", "listener", (1,), "listener failed with 1")]
    assert ran == [1]  # the next listener still ran
    assert loud.failed == [("connection", "listener", (2,), "listener failed with 2")]
    # The hub prints only what the emitter did not report itself.
    assert [str(error) for error in reported] == ["listener failed with 2"]


def test_a_hook_that_raises_is_reported_not_raised() -> None:
    class Broken:
        def on_listener_failed(self, event, listener, args, exc) -> bool:
            raise KeyError("hook failed")

    def listener() -> None:
        raise ValueError("listener failed")

    ran = []
    with hub_errors() as reported:
        submit_listener(Broken(), "message", (listener,), ())
        submit(ran.append, "after")
        wait_until(lambda: ran, "the next job to run")
    assert [repr(error) for error in reported] == [
        "KeyError('hook failed')",
        "ValueError('listener failed')",
    ]
