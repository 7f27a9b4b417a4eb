"""A ``Pool``'s workers over time: reload, resize, retirement, heartbeat.

Real worker processes (``tests/children/pool_lifecycle.py``); the pool runs in
the test process.
"""

import os
import signal

import gevent
import pytest
from gevent.queue import Queue

from geventfork import Pool, fork
from helpers import CHILDREN_DIR, TIMEOUT, wait_until

SCRIPT = os.path.join(CHILDREN_DIR, "pool_lifecycle.py")


@pytest.fixture
def pools(no_leaked_children):
    started = []

    def start(size, args=(), **options):
        pool = Pool(SCRIPT, size, args, **options)
        started.append(pool)
        return pool

    yield start
    for pool in started:
        pool.close(timeout=TIMEOUT)


def record(pool, *events):
    """A queue of ``(event, args...)`` for each of ``events`` on ``pool``."""
    queue = Queue()
    for event in events:
        pool.on(event, lambda *args, event=event: queue.put((event, *args)))
    return queue


def take(queue, event, count=1):
    """The next ``count`` entries of ``queue`` for ``event`` (others are kept aside)."""
    found, aside = [], []
    with gevent.Timeout(TIMEOUT, AssertionError(f"no {count} x {event!r} within {TIMEOUT} s")):
        while len(found) < count:
            entry = queue.get()
            (found if entry[0] == event else aside).append(entry)
    for entry in aside:
        queue.put(entry)
    return found


def pids_answering(pool, times):
    """The pids of the workers that answer ``times`` ``"pid"`` messages."""
    answers = record(pool, "message")
    for _ in range(times):
        pool.send("pid")
    return {entry[2][1] for entry in take(answers, "message", times)}


def test_reload_replaces_every_worker_and_sends_go_to_the_new_ones(pools):
    pool = pools(2)
    events = record(pool, "spawn", "exit")
    old = {child.pid for child in pool.workers}
    take(events, "spawn", 2)
    pool.reload()
    new = {entry[1].pid for entry in take(events, "spawn", 2)}
    assert not new & old
    exits = take(events, "exit", 2)
    assert {entry[1].pid for entry in exits} == old
    assert all(entry[2] == 0 for entry in exits)  # they retired: disconnected, status 0
    assert pids_answering(pool, 6) <= new
    assert {child.pid for child in pool.workers} == new


def test_a_worker_script_can_take_over_its_retirement(pools):
    pool = pools(1, ["custom"])
    messages = record(pool, "message", "exit")
    old = pool.workers[0].pid
    pool.reload()
    (entry,) = take(messages, "message")
    assert entry[2] == ["asked to retire", old]
    (exit_entry,) = take(messages, "exit")
    assert exit_entry[1].pid == old and exit_entry[2] == 0


def test_resize_adds_workers_and_retires_the_surplus(pools):
    pool = pools(2)
    events = record(pool, "spawn", "exit")
    take(events, "spawn", 2)
    pool.resize(3)
    take(events, "spawn")
    assert len(pool.workers) == 3
    pool.resize(1)
    exits = take(events, "exit", 2)
    assert all(entry[2] == 0 for entry in exits)
    gevent.sleep(0.5)  # nothing respawns them
    assert len(pool.workers) == 1 and pool.size == 1
    assert events.empty()
    with pytest.raises(ValueError, match="at least one worker"):
        pool.resize(0)


def test_a_retiring_worker_is_replaced_at_once_and_gets_nothing_new(pools):
    pool = pools(1)
    events = record(pool, "spawn", "exit", "message")
    take(events, "spawn")
    old = pool.workers[0].pid
    pool.send("retire")
    (answer,) = take(events, "message")
    assert answer[2] == ["retiring", old]
    (spawn,) = take(events, "spawn")  # before the old one has gone
    assert spawn[1].pid != old
    assert pids_answering(pool, 4) == {spawn[1].pid}
    (exit_entry,) = take(events, "exit")
    assert exit_entry[1].pid == old and exit_entry[2] == 0
    gevent.sleep(0.3)
    assert [child.pid for child in pool.workers] == [spawn[1].pid]


def test_a_worker_that_misses_the_heartbeat_is_killed_and_replaced(pools):
    pool = pools(2, heartbeat=1.0)
    events = record(pool, "spawn", "exit", "timeout", "message")
    take(events, "spawn", 2)
    wait_until(lambda: all(w.ready for w in pool._live), "both workers ready")
    gevent.sleep(2.5)  # a few heartbeats answered: nobody is killed
    assert not [entry for entry in list(events.queue) if entry[0] == "timeout"]
    blocked = pool.workers[0]
    blocked.send("block")
    take(events, "message")
    (timeout,) = take(events, "timeout")
    assert timeout[1] is blocked
    (exit_entry,) = take(events, "exit")
    assert exit_entry[1] is blocked and exit_entry[3] == "SIGKILL"
    (spawn,) = take(events, "spawn")
    pool.send("seen")  # pings never reached the scripts' 'message' listeners
    assert take(events, "message")[0][2] == ["seen", 1]
    assert blocked.pid not in {child.pid for child in pool.workers}


def test_the_librarys_own_messages_never_reach_message_listeners(no_leaked_children):
    child = fork(SCRIPT)
    answers = Queue()
    child.on("message", lambda message, handle: answers.put(message))
    try:
        child.send({"cmd": "GEVENTFORK_SOMETHING", "state": "x"})
        child.send({"cmd": "GEVENTFORK_POOL", "state": "ping"})  # answered with a pong
        child.send("seen")
        assert answers.get(timeout=TIMEOUT) == ["seen", 1]
    finally:
        child.kill(signal.SIGKILL)
        child.wait(TIMEOUT)


def test_a_worker_forked_while_the_pool_closes_is_disconnected_too(pools, monkeypatch):
    from geventfork import _pool

    pool = pools(1)
    real_fork = _pool.fork

    def slow_fork(*args, **options):
        gevent.sleep(0.3)  # close() runs meanwhile
        return real_fork(*args, **options)

    monkeypatch.setattr(_pool, "fork", slow_fork)
    growing = gevent.spawn(pool.resize, 2)
    gevent.sleep(0.05)
    started = gevent.get_hub().loop.now()
    pool.close(timeout=TIMEOUT)
    growing.join(TIMEOUT)
    assert gevent.get_hub().loop.now() - started < 3  # not the whole timeout
    assert pool.workers == []


def test_a_worker_that_disconnected_is_not_judged_by_the_heartbeat(pools):
    pool = pools(1, ["custom"], heartbeat=0.5)  # "custom": it disconnects 0.2 s after asked
    events = record(pool, "spawn", "exit", "timeout", "message")
    take(events, "spawn")
    wait_until(lambda: all(w.ready for w in pool._live), "the worker ready")
    old = pool.workers[0]
    old.send("linger")  # after it disconnects, it stays up 2 s more
    pool.reload()
    (exit_entry,) = [e for e in take(events, "exit") if e[1] is old]
    assert exit_entry[2] == 0 and exit_entry[3] is None  # exited by itself, not SIGKILL
    assert not [e for e in list(events.queue) if e[0] == "timeout"]
