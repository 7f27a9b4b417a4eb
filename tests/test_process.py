"""The child's end, ``geventfork.process``, seen from a real parent.

The scripts live in ``tests/children/``; each test forks one (``spawn_child``
stops it at teardown) or runs a parent script under ``python -m geventfork``
(registered in ``popen``). Every wait is bounded.
"""

import os
import signal
import socket
import subprocess
import sys

import gevent
import pytest
from gevent.event import AsyncResult

from geventfork.errors import GeventforkError, ProtocolError
from helpers import (
    CHILDREN_DIR,
    TIMEOUT,
    MiB,
    fd_table,
    inbox,
    gone,
    kill_quietly,
    next_event,
    python_env,
    take,
    wait_gone,
)


def run_module(popen, script, *args):
    """Start ``python -m geventfork tests/children/SCRIPT ARGS`` with piped stdout/stderr."""
    proc = gevent.subprocess.Popen(
        [sys.executable, "-m", "geventfork", os.path.join(CHILDREN_DIR, script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=python_env(),
    )
    popen.append(proc)
    return proc


def test_argv_and_channel_fileno(spawn_child):
    args = ["first", "with space", "ünïcode", 5]
    report = take(inbox(spawn_child("report.py", *args)))[0]
    script = os.path.join(CHILDREN_DIR, "report.py")
    assert report["argv"] == [sys.executable, script, "first", "with space", "ünïcode", "5"]
    assert report["sys_argv"] == [script, "first", "with space", "ünïcode", "5"]
    assert isinstance(report["fileno"], int) and report["fileno"] >= 0
    assert report["fileno_is_socket"]
    assert report["connected"] is True


def test_messages_sent_before_the_first_listener_are_held(spawn_child):
    child = spawn_child("late_listener.py")
    replies = inbox(child)
    assert take(replies) == ["ready"]
    for i in range(3):  # the child's top level is asleep: no listener yet
        child.send(i)
    assert take(replies, 3) == [0, 1, 2]


def test_after_the_top_level_a_message_with_no_listener_is_dropped(spawn_child):
    child = spawn_child("listen_on_sigusr1.py")
    replies = inbox(child)
    assert take(replies) == ["ready"]  # sent as its top level returned
    ours, theirs = socket.socketpair()
    with ours, theirs:
        acked = AsyncResult()
        child.send("dropped")
        child.send("dropped, with a handle", theirs, callback=acked.set)
        assert acked.get(timeout=TIMEOUT) is None  # the child took the handle...
        ours.settimeout(TIMEOUT)
        assert ours.recv(10) == b""  # ...and closed it: no copy of it is left
    child.kill(signal.SIGUSR1)  # now it listens
    assert take(replies) == ["listening"]
    child.send("echoed")
    assert take(replies) == ["echoed"]  # neither dropped message came back


@pytest.mark.parametrize(
    "actions, stays",
    [
        ([], False),
        (["message"], True),
        (["disconnect"], True),
        (["ref"], True),
        (["message", "unref"], False),
        (["unref", "message"], False),  # an explicit unref() wins over a later listener
        (["unref", "ref"], True),
    ],
    ids=[
        "nothing",
        "message-listener",
        "disconnect-listener",
        "channel.ref",
        "channel.unref",
        "unref-then-listener",
        "unref-then-ref",
    ],
)
def test_what_keeps_a_connected_child_alive(spawn_child, actions, stays):
    child = spawn_child("keepalive.py", *actions)
    assert take(inbox(child)) == ["ready"]
    if stays:
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.3)
        assert child.connected
        child.disconnect()  # without its channel, nothing keeps it
    assert child.wait(timeout=TIMEOUT) == 0


def test_child_exits_when_its_parent_is_killed(popen):
    parent = run_module(popen, "fork_echo.py")  # stays: its connected child keeps it
    with gevent.Timeout(TIMEOUT):
        child_pid = int(parent.stdout.readline())
    try:
        parent.kill()  # SIGKILL: no chance to close anything
        assert parent.wait(timeout=TIMEOUT) == -signal.SIGKILL
        assert wait_gone(child_pid), "the child outlived its SIGKILLed parent"
    finally:
        kill_quietly(child_pid)


def test_without_a_channel(popen):
    proc = run_module(popen, "no_channel.py")
    out, err = proc.communicate(timeout=TIMEOUT)
    assert (proc.returncode, err) == (0, b"")
    assert out.decode().splitlines() == ["False True", "ChannelClosedError ERR_IPC_CHANNEL_CLOSED"]


def test_a_blocking_handler_does_not_hold_up_other_messages(spawn_child):
    child = spawn_child("blocking_handler.py")
    replies = inbox(child)
    child.send("block")
    child.send("ping")
    assert take(replies) == ["ping"]
    child.send("release")
    assert take(replies) == ["unblocked"]


def test_garbage_on_the_channel_is_a_protocol_error(spawn_child):
    child = spawn_child("garbage.py")
    failed = next_event(child, "error")
    disconnected = next_event(child, "disconnect")
    (err,) = failed.get(timeout=TIMEOUT)
    assert isinstance(err, ProtocolError) and err.code == "ERR_IPC_PROTOCOL"
    assert isinstance(err, GeventforkError)
    assert err.data  # the bad bytes, as evidence
    assert disconnected.get(timeout=TIMEOUT) == ()
    assert not child.connected
    assert child.wait(timeout=TIMEOUT) == 0  # its channel closed: nothing kept it


def test_send_with_callback_as_the_top_level_returns(spawn_child):
    child = spawn_child("send_and_return.py", 16 * MiB)
    replies = inbox(child)
    # Nothing listens in the child, yet the runner flushes all of it before exiting.
    assert take(replies, 3) == ["x" * (16 * MiB), False, "None"]
    assert child.wait(timeout=TIMEOUT) == 0


def test_a_grandchild_does_not_inherit_the_channel(spawn_child, tmp_path):
    # A worker that starts `sleep 6 &` and exits: its channel used to live on
    # in the sleep, and the parent saw the worker disconnect 6 s later.
    pid_file = tmp_path / "grandchild.pid"
    child = spawn_child("spawn_grandchild.py", pid_file)
    replies = inbox(child)
    disconnected = next_event(child, "disconnect")
    (report,) = take(replies)
    assert report["inheritable"] is False
    assert report["env"] == []  # GEVENTFORK_CHANNEL_FD and the others are gone
    try:
        disconnected.get(timeout=2)  # promptly, not when the sleep ends
        assert child.wait(timeout=2) == 0
        with gevent.Timeout(TIMEOUT):
            while not pid_file.exists() or not pid_file.read_text().strip():
                gevent.sleep(0.01)
        grandchild = int(pid_file.read_text())
        assert not gone(grandchild), "the grandchild should still be sleeping"
        assert f"socket:[{report['inode']}]" not in fd_table(grandchild).values()
        with open(f"/proc/{grandchild}/environ", "rb") as f:
            assert b"GEVENTFORK_" not in f.read()
    finally:
        if pid_file.exists() and pid_file.read_text().strip():
            kill_quietly(int(pid_file.read_text()))
