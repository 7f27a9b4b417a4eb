"""``send()``'s rules on both ends, with real processes.

A caller's mistake (``callback`` not callable, ``options`` not a mapping)
is a ``TypeError`` at once, and nothing is queued. A send on a channel
already known to be closed raises ``ChannelClosedError`` at once, whatever
closed it: the child never started, it exited, ``disconnect()`` was called
on either side, or there never was a channel.
"""

import os
import subprocess
import sys

import gevent
import pytest
from gevent.event import AsyncResult

import geventfork
from geventfork import ChannelClosedError
from helpers import CHILDREN_DIR, TIMEOUT, inbox, next_event, python_env, take


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"callback": 5}, "send() callback must be callable or None, not int"),
        (
            {"options": "keep_open"},
            "send() options must be a mapping such as {'keep_open': True}, not str",
        ),
        (
            {"options": [("keep_open", True)]},
            "send() options must be a mapping such as {'keep_open': True}, not list",
        ),
    ],
    ids=["callback", "options-str", "options-list"],
)
def test_bad_arguments_raise_at_once_and_queue_nothing(spawn_child, bad, message):
    child = spawn_child("echo.py")
    replies = inbox(child)
    with pytest.raises(TypeError) as info:
        child.send("must not arrive", **bad)
    assert str(info.value) == message
    child.send("after")
    assert take(replies) == ["after"]  # the bad send left nothing behind


def test_a_mapping_that_is_not_a_dict_is_fine(spawn_child):
    from types import MappingProxyType

    child = spawn_child("echo.py")
    replies = inbox(child)
    sent = AsyncResult()
    assert child.send("ok", options=MappingProxyType({}), callback=sent.set) is True
    assert sent.get(timeout=TIMEOUT) is None
    assert take(replies) == ["ok"]


def test_a_child_that_never_started(children):
    child = geventfork.fork(os.path.join(CHILDREN_DIR, "echo.py"), exec_path="/nonexistent/python")
    children.append(child)
    next_event(child, "error").get(timeout=TIMEOUT)
    with pytest.raises(ChannelClosedError, match="^cannot send: the child process never started$"):
        child.send("anyone?")
    with pytest.raises(TypeError):  # a caller's mistake is named first
        child.send("anyone?", callback=5)


def test_after_the_child_exited(spawn_child):
    child = spawn_child("exit_with.py", 3)
    assert child.wait(timeout=TIMEOUT) == 3
    assert not child.connected  # even if its channel's EOF is not read yet
    called = []
    with pytest.raises(
        ChannelClosedError, match=r"^cannot send: the child process exited \(with code 3\)$"
    ):
        child.send("too late", callback=called.append)
    gevent.sleep(0.05)
    assert called == []  # raised: the callback is never called as well


def test_after_the_child_was_killed(spawn_child):
    child = spawn_child("sleeper.py")
    child.kill("SIGKILL")
    child.wait(timeout=TIMEOUT)
    with pytest.raises(ChannelClosedError, match=r"exited \(by SIGKILL\)"):
        child.send("too late")


def test_after_our_own_disconnect_at_once(spawn_child):
    child = spawn_child("count_messages.py")
    child.send(1)
    child.disconnect()  # the queue is still being flushed: sends are over anyway
    with pytest.raises(ChannelClosedError, match=r"\(disconnect\(\) was called\)$"):
        child.send(2)
    assert child.wait(timeout=TIMEOUT) == 1  # count_messages exits with what it got


def test_after_the_child_disconnected(spawn_child):
    child = spawn_child("count_messages.py")
    disconnected = next_event(child, "disconnect")
    child.send("disconnect")  # the child calls process.disconnect()
    disconnected.get(timeout=TIMEOUT)
    with pytest.raises(
        ChannelClosedError, match="^cannot send: the IPC channel to the child is closed$"
    ):
        child.send("too late")
    child.wait(timeout=TIMEOUT)


def test_the_childs_side(spawn_child):
    child = spawn_child("send_rules.py", silent=True)
    replies = inbox(child)
    assert take(replies) == [
        [
            "TypeError: send() callback must be callable or None, not int",
            "TypeError: send() options must be a mapping such as {'keep_open': True}, not str",
        ]
    ]
    child.disconnect()
    assert child.wait(timeout=TIMEOUT) == 0  # its send on 'disconnect' raised
    with gevent.Timeout(TIMEOUT):
        assert child.stdout.read() == (b"cannot send: the IPC channel to the parent is closed\n")


def test_a_process_without_a_channel(popen, tmp_path):
    path = tmp_path / "alone.py"
    path.write_text(
        "from geventfork import ChannelClosedError, process\n"
        "try:\n"
        "    process.send('anyone?')\n"
        "except ChannelClosedError as exc:\n"
        "    print(exc)\n"
    )
    proc = gevent.subprocess.Popen(
        [sys.executable, "-m", "geventfork", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=python_env(),
    )
    popen.append(proc)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert (proc.returncode, err) == (0, b"")
    assert out == b"cannot send: this process has no IPC channel: it was not started by fork()\n"
