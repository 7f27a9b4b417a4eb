"""``recv()`` and ``messages()``: waiting for a message instead of listening.

Real processes (``tests/children/recv_modes.py``) and real sockets.
"""

import gc
import socket

import gevent
import pytest

from geventfork.errors import ChannelClosedError
from helpers import TIMEOUT, fd_count, read_to_eof, wait_until


def accept_one(server):
    """A client connected to ``server`` and the parent's ``net.Socket`` for it."""
    conns = gevent.queue.Queue()
    server.once("connection", conns.put)
    client = socket.create_connection(("127.0.0.1", server.address()["port"]))
    return client, conns.get(timeout=TIMEOUT)


def test_messages_come_in_order_and_a_closed_channel_ends_the_loop(spawn_child):
    child = spawn_child("recv_modes.py", "burst", "1000")
    got = [child.recv(timeout=TIMEOUT)[0] for _ in range(1000)]
    assert got == list(range(1000))
    with pytest.raises(ChannelClosedError, match="no message"):
        child.recv(timeout=TIMEOUT)
    assert child.wait(TIMEOUT) == 0


def test_messages_left_when_the_child_exits_are_still_received(spawn_child):
    child = spawn_child("recv_modes.py", "burst", "50")
    assert child.recv(timeout=TIMEOUT) == (0, None)  # from now on, messages are kept
    assert child.wait(TIMEOUT) == 0
    wait_until(lambda: not child.connected, "the channel closed")
    assert [message for message, _ in child.messages()] == list(range(1, 50))


def test_a_worker_loop_over_messages_serves_sockets_and_ends_with_the_channel(spawn_child, server):
    child = spawn_child("recv_modes.py", "echo")
    for n in range(3):
        child.send(n)
        assert child.recv(timeout=TIMEOUT) == (["echo", n], None)
    client, conn = accept_one(server)
    child.send("socket", conn)
    assert child.recv(timeout=TIMEOUT) == (["echo", "socket"], None)
    assert read_to_eof(client) == b"served\n"
    client.close()
    child.disconnect()
    assert child.wait(TIMEOUT) == 0  # messages() ended when the channel closed


def test_recv_times_out_then_gets_the_next_message(spawn_child):
    child = spawn_child("recv_modes.py", "echo")
    started = gevent.get_hub().loop.now()
    with pytest.raises(TimeoutError, match="no message within 0.2 s"):
        child.recv(timeout=0.2)
    assert gevent.get_hub().loop.now() - started >= 0.19
    child.send("after")
    assert child.recv(timeout=TIMEOUT) == (["echo", "after"], None)
    child.disconnect()
    child.wait(TIMEOUT)


def test_a_socket_taken_by_recv_is_acknowledged_when_recv_returns_it(spawn_child, server):
    child = spawn_child("recv_modes.py", "late")
    assert child.recv(timeout=TIMEOUT)[0] == "ready"
    child.send("go")
    client, conn = accept_one(server)
    order = []
    child.send("socket", conn, callback=lambda err: order.append(("acknowledged", err)))
    assert child.recv(timeout=TIMEOUT)[0] == "taking"
    order.append("taking")
    assert child.recv(timeout=TIMEOUT)[0] == "taken"
    wait_until(lambda: len(order) == 2, "the acknowledgment")
    assert order == ["taking", ("acknowledged", None)]  # not on receipt: after recv()
    assert read_to_eof(client) == b"late\n"
    client.close()
    assert child.wait(TIMEOUT) == 0


def test_listeners_come_first_and_recv_gets_what_no_listener_takes(spawn_child):
    child = spawn_child("recv_modes.py", "echo")
    heard = gevent.queue.Queue()

    def listener(message, handle):
        heard.put(message)

    child.on("message", listener)
    child.send("to the listener")
    assert heard.get(timeout=TIMEOUT) == ["echo", "to the listener"]
    with pytest.raises(TimeoutError):
        child.recv(timeout=0.2)
    child.off("message", listener)
    child.send("to recv")
    assert child.recv(timeout=TIMEOUT) == (["echo", "to recv"], None)
    assert heard.empty()
    child.disconnect()
    child.wait(TIMEOUT)


def test_a_socket_kept_unacknowledged_when_the_channel_closes_is_closed(spawn_child, server):
    gc.disable()  # closed by the library, not by the collector
    try:
        kept_unacknowledged_and_dropped(spawn_child, server)
    finally:
        gc.enable()


def kept_unacknowledged_and_dropped(spawn_child, server):
    baseline = fd_count()
    child = spawn_child("recv_modes.py", "socket-then-exit", str(server.address()["port"]))
    with pytest.raises(TimeoutError):
        child.recv(timeout=0.1)  # opens the inbox; the socket arrives later
    assert child.wait(TIMEOUT) == 0
    wait_until(lambda: not child.connected, "the channel closed")
    with pytest.raises(ChannelClosedError):  # the unacknowledged socket was dropped
        child.recv(timeout=TIMEOUT)
    wait_until(lambda: fd_count() <= baseline, "the dropped socket's fd closed")
