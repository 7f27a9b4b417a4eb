"""Tests for ``EventEmitter``: Node's event API, with blocking-friendly dispatch.

``'message'`` and ``'connection'`` listeners each run in a greenlet of their
own, started in arrival order; every other event calls its listeners in the
emitting greenlet. An ``'error'`` nobody listens for raises.
"""

from __future__ import annotations

import logging

import gevent
import pytest
from gevent.event import Event

from geventfork import EventEmitter
from helpers import TIMEOUT, hub_errors, wait_until

SPAWNED = ["message", "connection"]


class Recorder:
    """Listeners that append ``(name, args)`` to one shared log."""

    def __init__(self) -> None:
        self.log: list = []

    def listener(self, name: str):
        def fn(*args):
            self.log.append((name, args))

        return fn


class Hooked(EventEmitter):
    """Records the ``_listeners_changed`` hook (what Channel and Socket use)."""

    def __init__(self) -> None:
        super().__init__()
        self.changed: list = []

    def _listeners_changed(self, event: str) -> None:
        self.changed.append((event, self.listener_count(event)))


# ---------------------------------------------------------------- on / emit


def test_emit_calls_listeners_in_order_with_args() -> None:
    emitter, rec = EventEmitter(), Recorder()
    emitter.on("data", rec.listener("first"))
    emitter.on("data", rec.listener("second"))
    assert emitter.emit("data", 1, "two") is True
    assert rec.log == [("first", (1, "two")), ("second", (1, "two"))]


def test_emit_without_listeners_returns_false() -> None:
    emitter = EventEmitter()
    assert emitter.emit("data", 1) is False
    assert emitter.listener_count("data") == 0


def test_events_are_independent() -> None:
    emitter, rec = EventEmitter(), Recorder()
    emitter.on("a", rec.listener("a"))
    emitter.emit("b")
    assert rec.log == []


def test_on_returns_fn_and_counts_each_registration() -> None:
    emitter, rec = EventEmitter(), Recorder()
    fn = rec.listener("fn")
    assert emitter.on("data", fn) is fn
    emitter.on("data", fn)  # Node allows the same listener twice
    assert emitter.listener_count("data") == 2
    emitter.emit("data")
    assert rec.log == [("fn", ()), ("fn", ())]


def test_plain_events_run_in_the_emitting_greenlet() -> None:
    emitter, ran_in = EventEmitter(), []
    emitter.on("data", lambda: ran_in.append(gevent.getcurrent()))
    emitter.emit("data")
    assert ran_in == [gevent.getcurrent()]


def test_exception_in_a_plain_listener_propagates_from_emit() -> None:
    emitter = EventEmitter()
    emitter.on("data", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        emitter.emit("data")


def test_listener_list_is_snapshotted_at_emit() -> None:
    # As in Node: listeners added or removed during an emit do not change it.
    emitter, rec = EventEmitter(), Recorder()
    late, second = rec.listener("late"), rec.listener("second")

    def first():
        rec.log.append(("first", ()))
        emitter.on("data", late)
        emitter.off("data", second)

    emitter.on("data", first)
    emitter.on("data", second)
    emitter.emit("data")
    assert rec.log == [("first", ()), ("second", ())]
    rec.log.clear()
    emitter.emit("data")
    assert rec.log == [("first", ()), ("late", ())]


def test_aliases_listeners_and_remove_all() -> None:
    emitter, rec = EventEmitter(), Recorder()
    fn = rec.listener("fn")
    emitter.add_listener("a", fn)
    emitter.on("b", fn)
    assert emitter.listeners("a") == [fn]
    emitter.listeners("a").clear()  # a copy: the emitter's list is untouched
    assert emitter.listener_count("a") == 1
    emitter.remove_listener("a", fn)
    assert emitter.listener_count("a") == 0
    emitter.on("a", fn)
    emitter.remove_all_listeners("a")
    assert (emitter.listener_count("a"), emitter.listener_count("b")) == (0, 1)
    emitter.remove_all_listeners()
    assert emitter.listener_count("b") == 0


# ---------------------------------------------------------------- decorators


@pytest.mark.parametrize("method", ["on", "once"])
def test_decorator_form_registers_and_returns_the_function(method: str) -> None:
    emitter, seen = EventEmitter(), []

    @getattr(emitter, method)("data")
    def handler(value):
        seen.append(value)

    assert callable(handler) and handler.__name__ == "handler"
    emitter.emit("data", 1)
    emitter.emit("data", 2)
    assert seen == ([1, 2] if method == "on" else [1])


# ---------------------------------------------------------------- once / off


def test_once_runs_once_and_removes_itself() -> None:
    emitter, rec = EventEmitter(), Recorder()
    fn = rec.listener("once")
    assert emitter.once("data", fn) is fn
    assert emitter.listener_count("data") == 1
    assert emitter.emit("data", 1) is True
    assert emitter.listener_count("data") == 0
    assert emitter.emit("data", 2) is False
    assert rec.log == [("once", (1,))]


def test_once_listener_emitting_again_runs_once() -> None:
    # It is removed before it runs, as in Node, so re-entry does not repeat it.
    emitter, calls = EventEmitter(), []

    def fn():
        calls.append(1)
        emitter.emit("data")

    emitter.once("data", fn)
    emitter.emit("data")
    assert calls == [1]


def test_off_removes_the_most_recent_registration_only() -> None:
    emitter, rec = EventEmitter(), Recorder()
    fn, other = rec.listener("fn"), rec.listener("other")
    emitter.on("data", fn)
    emitter.on("data", other)
    emitter.on("data", fn)
    emitter.off("data", fn)
    emitter.emit("data")
    assert rec.log == [("fn", ()), ("other", ())]


def test_off_of_an_unknown_listener_is_a_no_op() -> None:
    emitter, rec = EventEmitter(), Recorder()
    emitter.on("data", rec.listener("kept"))
    emitter.off("data", rec.listener("never added"))
    emitter.off("other", rec.listener("never added"))
    assert emitter.listener_count("data") == 1


def test_off_removes_a_once_listener_by_the_original_function() -> None:
    emitter, rec = EventEmitter(), Recorder()
    fn = rec.listener("once")
    emitter.once("data", fn)
    emitter.off("data", fn)
    assert emitter.listener_count("data") == 0
    assert emitter.emit("data") is False
    assert rec.log == []


def test_listeners_changed_hook_sees_every_change() -> None:
    emitter, rec = Hooked(), Recorder()
    fn = rec.listener("fn")
    emitter.on("message", fn)
    emitter.once("message", fn)
    emitter.emit("data")  # no listeners: no change
    emitter.off("message", fn)  # removes the once wrapper (most recent)
    emitter.on("data", fn)
    emitter.remove_all_listeners()
    assert emitter.changed == [
        ("message", 1),
        ("message", 2),
        ("message", 1),
        ("data", 1),
        ("message", 0),
        ("data", 0),
    ]


# ---------------------------------------------------------------- 'error'


def test_error_without_listener_raises_the_error_itself() -> None:
    emitter = EventEmitter()
    err = OSError("boom")
    with pytest.raises(OSError) as info:
        emitter.emit("error", err)
    assert info.value is err


@pytest.mark.parametrize("args", [(), ("not an exception",)], ids=["no-arg", "string"])
def test_error_without_listener_and_no_exception_raises_runtime_error(args: tuple) -> None:
    with pytest.raises(RuntimeError, match="Unhandled 'error' event"):
        EventEmitter().emit("error", *args)


def test_error_with_listener_is_delivered_not_raised() -> None:
    emitter, seen = EventEmitter(), []
    emitter.on("error", seen.append)
    err = ValueError("x")
    assert emitter.emit("error", err) is True
    assert seen == [err]


def test_error_with_only_a_once_listener_raises_the_second_time() -> None:
    emitter, seen = EventEmitter(), []
    emitter.once("error", seen.append)
    emitter.emit("error", ValueError("first"))
    with pytest.raises(ValueError, match="second"):
        emitter.emit("error", ValueError("second"))
    assert [str(e) for e in seen] == ["first"]


# ---------------------------------------------------------------- spawned events


@pytest.mark.parametrize("event", SPAWNED)
def test_spawned_listeners_run_later_each_in_its_own_greenlet(event: str) -> None:
    # Both block at once: each must be suspended in a greenlet of its own,
    # neither of them the emitter's.
    emitter, ran_in, gate = EventEmitter(), [], Event()

    def listener(n):
        ran_in.append((n, gevent.getcurrent()))
        assert gate.wait(timeout=TIMEOUT), "the gate never opened"

    emitter.on(event, listener)
    emitter.on(event, listener)
    assert emitter.emit(event, "x") is True
    assert ran_in == []  # emit only started them
    wait_until(lambda: len(ran_in) == 2, "both listeners to start")
    greenlets = {g for _, g in ran_in}
    assert len(greenlets) == 2
    assert gevent.getcurrent() not in greenlets
    gate.set()


@pytest.mark.parametrize("event", SPAWNED)
def test_an_exception_in_a_listener_is_reported_and_later_ones_still_run(event: str) -> None:
    emitter, seen = EventEmitter(), []

    def listener(n):
        seen.append(n)
        if n % 2:
            raise ValueError(f"listener {n} failed")

    with hub_errors() as reported:
        emitter.on(event, listener)
        for n in range(6):
            emitter.emit(event, n)
        wait_until(lambda: len(seen) == 6, "every listener to run")
    assert seen == list(range(6))
    assert [str(e) for e in reported] == [
        "listener 1 failed",
        "listener 3 failed",
        "listener 5 failed",
    ]


@pytest.mark.parametrize("event", SPAWNED)
def test_spawned_listeners_start_in_arrival_order(event: str) -> None:
    emitter, started, count = EventEmitter(), [], 200
    emitter.on(event, started.append)
    for n in range(count):
        emitter.emit(event, n)
    wait_until(lambda: len(started) == count, f"{count} listeners to start")
    assert started == list(range(count))


@pytest.mark.parametrize("event", SPAWNED)
@pytest.mark.parametrize("blocker", ["event-wait", "sleep"])
def test_a_blocking_listener_does_not_hold_up_later_ones(event: str, blocker: str) -> None:
    emitter, gate, others_done = EventEmitter(), Event(), Event()
    started, finished = [], []

    def listener(n):
        started.append(n)
        if n == 0:
            if blocker == "event-wait":
                assert gate.wait(timeout=TIMEOUT), "the gate never opened"
            else:
                while not gate.is_set():
                    gevent.sleep(0.01)  # a listener that polls, cooperatively
        finished.append(n)
        if finished == [1, 2, 3]:
            others_done.set()

    emitter.on(event, listener)
    for n in range(4):
        emitter.emit(event, n)
    assert others_done.wait(timeout=TIMEOUT), "a blocked listener held up the others"
    assert started == [0, 1, 2, 3]
    assert 0 not in finished
    gate.set()
    wait_until(lambda: finished == [1, 2, 3, 0], "the blocked listener to finish")


@pytest.mark.parametrize("event", SPAWNED)
def test_an_emit_while_a_listener_blocks_still_runs(event: str) -> None:
    # Nothing waits behind the first listener when it blocks; the second
    # emit comes later, from elsewhere.
    emitter, gate, second_ran = EventEmitter(), Event(), Event()
    started = Event()

    def listener(n):
        if n == 0:
            started.set()
            assert gate.wait(timeout=TIMEOUT), "the gate never opened"
        else:
            second_ran.set()

    emitter.on(event, listener)
    emitter.emit(event, 0)
    assert started.wait(timeout=TIMEOUT)
    emitter.emit(event, 1)
    assert second_ran.wait(timeout=TIMEOUT), "a blocked listener held up a later emit"
    gate.set()


@pytest.mark.parametrize("event", SPAWNED)
def test_a_listener_that_emits_and_then_blocks_does_not_hold_up_what_it_emitted(
    event: str,
) -> None:
    emitter, gate, inner_ran = EventEmitter(), Event(), Event()

    def listener(n):
        if n == 0:
            emitter.emit(event, 1)
            assert gate.wait(timeout=TIMEOUT), "the gate never opened"
        else:
            inner_ran.set()

    emitter.on(event, listener)
    emitter.emit(event, 0)
    assert inner_ran.wait(timeout=TIMEOUT), "the emitting listener held up its own emit"
    gate.set()


@pytest.mark.parametrize("event", SPAWNED)
def test_a_blocking_listener_does_not_hold_up_another_listener_of_the_same_emit(
    event: str,
) -> None:
    emitter, gate, second_ran = EventEmitter(), Event(), Event()
    emitter.on(event, lambda: gate.wait(timeout=TIMEOUT))
    emitter.on(event, second_ran.set)
    emitter.emit(event)
    assert second_ran.wait(timeout=TIMEOUT), "the first listener held up the second"
    gate.set()


@pytest.mark.parametrize("event", SPAWNED)
def test_once_on_a_spawned_event_is_removed_at_emit(event: str) -> None:
    # Its greenlet has not run when the second emit comes (a burst of
    # messages): it must still be gone, or it would run twice, and the
    # channel would think a listener took the second message's handle.
    emitter, seen, ran = EventEmitter(), [], Event()
    emitter.once(event, lambda n: (seen.append(n), ran.set()))
    assert emitter.emit(event, 1) is True
    assert emitter.listener_count(event) == 0
    assert emitter.emit(event, 2) is False
    assert ran.wait(timeout=TIMEOUT), "the once listener never ran"
    assert seen == [1]


# ---------------------------------------------------------------- a listener that raised


class FailureHooked(EventEmitter):
    """Records the ``on_listener_failed`` hook (what ends a failed handler's socket)."""

    def __init__(self, order: list) -> None:
        super().__init__()
        self.order = order

    def on_listener_failed(self, event, listener, args, exc) -> bool:
        self.order.append(("hook", event, listener.__name__, args, str(exc)))
        return False


@pytest.fixture
def reported():
    """What the hub reports of raising listeners, in order (instead of printing it)."""
    log: list = []
    with hub_errors(lambda error: log.append(("hub", str(error)))):
        yield log


@pytest.mark.parametrize("event", SPAWNED)
def test_a_raising_spawned_listener_is_told_to_the_emitter_before_the_hub(
    event: str, reported: list
) -> None:
    emitter = FailureHooked(reported)

    def listener(n, tag):
        if n == 2:
            raise ValueError("listener failed")

    emitter.on(event, listener)
    for n in range(4):
        emitter.emit(event, n, "x")
    wait_until(lambda: len(reported) == 2, "the failure to be reported")
    gevent.sleep(0.01)
    assert reported == [
        ("hook", event, "listener", (2, "x"), "listener failed"),
        ("hub", "listener failed"),
    ]


def test_a_raising_plain_listener_propagates_without_the_hook(reported: list) -> None:
    emitter = FailureHooked(reported)
    emitter.on("data", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        emitter.emit("data")
    assert reported == []


def test_a_hook_that_raises_is_reported_not_raised(reported: list) -> None:
    class Broken(EventEmitter):
        def on_listener_failed(self, event, listener, args, exc) -> bool:
            raise RuntimeError("hook failed")

    emitter, after = Broken(), Event()
    emitter.on("message", lambda: 1 / 0)
    emitter.on("message", after.set)
    emitter.emit("message")
    assert after.wait(timeout=TIMEOUT)  # the next listener still runs
    assert [entry[1] for entry in reported] == ["hook failed", "division by zero"]


def test_the_default_hook_abandons_arguments_that_can_be_abandoned(reported: list) -> None:
    """Only emitters (a net.Socket) are abandoned: a user's object that
    happens to have an ``on_abandoned`` method is left alone."""

    class Orphan(EventEmitter):
        abandoned = 0

        def on_abandoned(self) -> None:
            self.abandoned += 1

    class Message:
        abandoned = 0

        def on_abandoned(self) -> None:
            self.abandoned += 1

    orphan, message, emitter = Orphan(), Message(), EventEmitter()

    def listener(*args):
        raise ValueError("listener failed")

    emitter.on("connection", listener)
    emitter.emit("connection", orphan, message, {"on_abandoned": "not looked up on instances"})
    wait_until(lambda: reported, "the failure to be reported")
    assert (orphan.abandoned, message.abandoned) == (1, 0)


@pytest.mark.parametrize("event", SPAWNED)
def test_a_geventfork_error_from_a_listener_is_one_line_naming_it(
    event: str, reported: list, caplog
) -> None:
    from geventfork.errors import ChannelClosedError

    emitter = EventEmitter()

    @emitter.once(event)
    def on_event():
        raise ChannelClosedError("the IPC channel is closed")

    with caplog.at_level(logging.WARNING, logger="geventfork"):
        emitter.emit(event)
        wait_until(lambda: caplog.records, "the warning")
    gevent.sleep(0.01)
    assert reported == []  # no traceback from the hub
    [record] = caplog.records
    line = f"test_events.py:{on_event.__code__.co_firstlineno + 2}"
    assert record.getMessage() == (
        f"'{event}' listener test_a_geventfork_error_from_a_listener_is_one_line_naming_it."
        f"<locals>.on_event ({line}) failed: ChannelClosedError: the IPC channel is closed"
    )
    assert record.exc_info is None


def test_a_runner_lets_go_of_a_finished_job_at_once() -> None:
    import gc
    import weakref

    class Payload:
        pass

    emitter, ran = EventEmitter(), Event()
    emitter.on("message", lambda payload: ran.set())
    payload = Payload()
    ref = weakref.ref(payload)
    gc.disable()
    try:
        emitter.emit("message", payload)
        del payload
        assert ran.wait(timeout=TIMEOUT)
        gevent.sleep(0)  # the runner parks
        assert ref() is None, "the parked runner still holds the job's arguments"
    finally:
        gc.enable()
