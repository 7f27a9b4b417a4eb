"""The channel's limits: acknowledged sends, lost handles, back-pressure, bad fds.

Real ``socketpair`` channels and real fds; the far end is either a second
``Channel`` or a raw peer that writes frames by hand.
"""
from __future__ import annotations

import os
import socket
from typing import Any

import gevent
import pytest

from geventfork import _wire
from geventfork._channel import HANDLE_WEIGHT, HIGH_WATER_MARK
from geventfork.errors import ChannelBusyError, ChannelClosedError, HandleLostError
from helpers import TIMEOUT, wait_until
from test_channel import (  # noqa: F401 (fixtures)
    Callbacks,
    assert_connected,
    close_fds,
    opened,
    pair,
    raw_pair,
    unix_pair,
)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- acknowledged plain messages -------------------------------------------


def test_an_acknowledged_message_waits_for_the_receivers_ack(raw_pair) -> None:
    a, peer = raw_pair()
    cbs = Callbacks()
    a.ch.send("job", acknowledge=True, callback=cbs.new("job"))
    frame = peer.frame()
    assert frame.payload == b'"job"' and frame.ident and not frame.fds
    gevent.sleep(0.05)
    assert cbs.calls["job"] == [], "called back before the ACK"
    peer.send(_wire.encode_ack(frame.ident))
    assert cbs.wait("job") is None


def test_a_channel_acknowledges_on_receipt(pair) -> None:
    a, b = pair()
    cbs = Callbacks()
    a.ch.send({"n": 1}, acknowledge=True, callback=cbs.new(1))
    assert b.message() == {"n": 1}
    assert cbs.wait(1) is None


def test_an_acknowledged_message_fails_if_the_receiver_closes_first(raw_pair) -> None:
    a, peer = raw_pair()
    cbs = Callbacks()
    a.ch.send("job", acknowledge=True, callback=cbs.new("job"))
    peer.frame()  # read, never acknowledged
    peer.close()
    assert isinstance(cbs.wait("job"), ChannelClosedError)
    a.wait_closed()


def test_an_end_that_disconnected_takes_no_message_it_cannot_acknowledge(pair) -> None:
    a, b = pair()
    cbs = Callbacks()
    b.ch.disconnect()
    a.ch.send("job", acknowledge=True, callback=cbs.new("job"))
    assert isinstance(cbs.wait("job"), ChannelClosedError)
    assert b.messages.empty()


# -- tracked sockets: DONE -------------------------------------------------


def test_done_reaches_the_sender_once_the_receiver_destroys_the_socket(pair, opened) -> None:
    from geventfork import net

    a, b = pair()
    mine, client = opened(*socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM))
    sent = net.Socket(mine, paused=True)
    done: list = []
    acked = Callbacks()
    a.ch.send("s", sent, {"keep_open": True}, acked.new("s"), on_done=lambda: done.append(1))
    message, received = b.messages.get(timeout=TIMEOUT)
    assert message == "s" and acked.wait("s") is None
    gevent.sleep(0.05)
    assert done == [], "DONE before the receiver was done"
    received.destroy()
    wait_until(lambda: done == [1], "on_done")
    gevent.sleep(0.05)
    assert done == [1]
    sent.destroy()


def test_done_is_never_sent_for_an_untracked_socket(raw_pair, opened) -> None:
    from geventfork import net

    a, peer = raw_pair()
    mine, client = opened(*socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM))
    peer_sock, _ = opened(*socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM))
    data, _ = _wire.encode(_wire.Frame(_wire.MESSAGE, b'"s"', (0,), 1, 1, 1, ident=5))
    peer.send(data, (mine.fileno(),))
    message, received = a.messages.get(timeout=TIMEOUT)
    assert isinstance(received, net.Socket)
    assert peer.frame().kind == _wire.ACK
    received.destroy()
    a.ch.send("after")
    frame = peer.frame()
    assert (frame.kind, frame.payload) == (_wire.MESSAGE, b'"after"'), "a DONE nobody asked for"


def test_done_for_an_unknown_message_is_reported(raw_pair) -> None:
    a, peer = raw_pair()
    peer.send(_wire.encode_ack(4242, _wire.DONE))
    assert "DONE for unknown message 4242" in str(a.error())
    assert a.ch.connected


# -- lost handles (NACK) ---------------------------------------------------


def test_nack_is_a_handle_lost_error_and_the_handle_can_be_sent_again(raw_pair, opened) -> None:
    a, peer = raw_pair()
    handle, other = unix_pair(opened)
    cbs = Callbacks()
    a.ch.send("h", handle, callback=cbs.new("first"))
    frame = peer.frame()
    close_fds(frame.fds)
    peer.send(_wire.encode_ack(frame.ident, _wire.NACK))
    err = cbs.wait("first")
    assert isinstance(err, HandleLostError) and err.code == "ERR_IPC_HANDLE_LOST"
    assert_connected(handle, other)
    a.ch.send("h", handle, callback=cbs.new("second"))  # no longer in flight
    frame = peer.frame()
    close_fds(frame.fds)
    peer.send(_wire.encode_ack(frame.ident))
    assert cbs.wait("second") is None


def net_connection(opened: Any) -> tuple:
    """A ``net.Socket`` on a real TCP connection, and its client (blocking, bounded)."""
    from geventfork import net

    listener = opened(socket.socket())
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = opened(socket.create_connection(listener.getsockname(), timeout=TIMEOUT))
    accepted, _ = listener.accept()
    return net.Socket(accepted, paused=True), client


def test_a_lost_socket_without_a_callback_is_ended_and_reported_once(raw_pair, opened) -> None:
    a, peer = raw_pair()
    conn, client = net_connection(opened)
    client.sendall(b"request nobody will read")
    before = open_fds()
    a.ch.send("socket", conn)
    frame = peer.frame()
    close_fds(frame.fds)
    peer.send(_wire.encode_ack(frame.ident, _wire.NACK))
    assert client.recv(100) == b"", "no EOF"  # ended gracefully: EOF, no reset
    assert isinstance(a.error(), HandleLostError)  # to the owner, once
    wait_until(lambda: open_fds() < before, "the socket closed")
    gevent.sleep(0.05)
    assert a.errors.empty()


def test_a_socket_in_flight_when_the_channel_closes_is_ended_without_a_callback(
    raw_pair, opened
) -> None:
    a, peer = raw_pair()
    conn, client = net_connection(opened)
    a.ch.send("socket", conn)
    close_fds(peer.frame().fds)
    peer.close()  # the worker died before acknowledging
    assert client.recv(100) == b""
    a.wait_closed()
    assert isinstance(a.error(), ChannelClosedError)
    gevent.sleep(0.05)
    assert a.errors.empty()


# -- handles in flight -----------------------------------------------------


def test_a_plain_socket_already_in_flight_is_refused_before_anything_is_queued(
    raw_pair, opened
) -> None:
    a, peer = raw_pair()
    handle, other = unix_pair(opened)
    cbs = Callbacks()
    a.ch.send("h", handle, {"keep_open": True}, cbs.new("h"))
    with pytest.raises(ValueError, match="already being sent"):
        a.ch.send("again", handle)
    frame = peer.frame()
    close_fds(frame.fds)
    peer.send(_wire.encode_ack(frame.ident))
    assert cbs.wait("h") is None
    a.ch.send("after", callback=cbs.new("after"))
    assert peer.frame().payload == b'"after"'
    assert_connected(handle, other)


def test_a_refused_fd_fails_its_message_only(raw_pair, opened) -> None:
    """The kernel refusing a message's fd (EBADF) fails that message, not the channel."""
    a, peer = raw_pair()
    cbs = Callbacks()
    a.ch.send("x" * (4 * 1024 * 1024), callback=cbs.new("big"))  # fills the socket: queued
    doomed, _other = unix_pair(opened)
    a.ch.send("doomed", doomed, callback=cbs.new("doomed"))
    os.close(doomed.detach())  # its fd is gone before the channel writes it
    a.ch.send("after", callback=cbs.new("after"))
    with gevent.Timeout(TIMEOUT):
        while True:
            frame = peer.frame()
            if frame.payload == b'"after"':
                break
    err = cbs.wait("doomed")
    assert isinstance(err, OSError) and not isinstance(err, ChannelClosedError), err
    assert cbs.wait("big") is None and cbs.wait("after") is None
    assert a.ch.connected


# -- back-pressure ---------------------------------------------------------


def test_handles_awaiting_their_ack_count_towards_the_high_water_mark(raw_pair, opened) -> None:
    a, peer = raw_pair()
    per_mark = HIGH_WATER_MARK // HANDLE_WEIGHT
    results = []
    handles = []
    for _ in range(per_mark + 2):
        handle, _ = unix_pair(opened)
        handles.append(handle)
        results.append(a.ch.send("h", handle, {"keep_open": True}, lambda err: None))
    assert results[0] is True
    assert results[-1] is False, "sockets a stuck peer never acknowledged do not count"
    idents = []
    with gevent.Timeout(TIMEOUT):
        while len(idents) < len(handles):
            frame = peer.frame()
            close_fds(frame.fds)
            idents.append(frame.ident)
    for ident in idents:
        peer.send(_wire.encode_ack(ident))
    wait_until(lambda: a.ch.send("light") is True, "send() True once acknowledged")


def test_past_max_queued_send_raises_and_queues_nothing(pair) -> None:
    a, b = pair(max_queued=256 * 1024)
    b.ch._read_watcher.stop()  # the peer reads nothing (no behaviour shows a stalled reader)
    b.ch._reader.kill()
    chunk = "x" * (32 * 1024)
    sent = 0
    with pytest.raises(ChannelBusyError) as info:
        for _ in range(100):
            a.ch.send(chunk)
            sent += 1
    assert info.value.code == "ERR_IPC_BUSY" and "max_queued" in str(info.value)
    assert 0 < sent < 100
    with pytest.raises(ChannelBusyError):
        a.ch.send(chunk)  # still busy: nothing was queued by the failed send
    assert a.ch.connected


# -- fds only with a frame's first byte --------------------------------------


def test_fds_sent_mid_frame_are_closed_at_once_and_close_the_channel(raw_pair) -> None:
    """1,000 fds attached to the middle of a frame never finished: none is kept."""
    a, peer = raw_pair()
    peer.send(_wire.HEADER.pack(1_000_000, _wire.MESSAGE, 1, 0, 0, 0, 0) + b"[")
    before = open_fds()
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(1000)]
    try:
        for i in range(0, 1000, 100):
            try:
                peer.send(b"1," * 10, tuple(fds[i : i + 100]))
            except OSError:  # EPIPE: the channel closed on the first batch
                break
            gevent.sleep(0.01)
    finally:
        close_fds(fds)
    err = a.error()
    assert "middle of a frame" in str(err)
    a.wait_closed()
    wait_until(lambda: open_fds() <= before, "the received fds closed")


# -- fairness --------------------------------------------------------------


def test_a_flooding_child_does_not_starve_the_parents_other_greenlets(spawn_child, popen) -> None:
    """A child streams small messages as fast as it can while a client pings the
    parent's own server: the parent's hub keeps switching.

    Two checks. Structural, which no load on the machine can upset: a
    greenlet that waits for the loop to be idle sees at most a couple of
    read batches (``READ_BATCH`` messages each) handled between two of its
    wakes, where one 256 KiB read of the flood holds thousands. Timed, loosely: the
    pings' p99 (8.8 ms here; 33 ms with a reader that never yields, and a
    132 ms median in an earlier measurement of the same flood).
    """
    import json
    import subprocess
    import sys

    from geventfork import net
    from geventfork._channel import READ_BATCH
    from helpers import CHILDREN_DIR

    server = net.create_server(lambda conn: conn.on("data", conn.write))
    server.listen(0, "127.0.0.1")
    received = []
    gaps = []

    def tick() -> None:
        last = len(received)
        while True:
            gevent.idle()  # wakes once the loop has nothing else pending
            gaps.append(len(received) - last)
            last = len(received)

    child = spawn_child("flood.py", 4)
    child.on("message", lambda message, handle: received.append(1))
    wait_until(lambda: len(received) > 10_000, "the flood to start")
    ticker = gevent.spawn(tick)
    pinger = subprocess.Popen(
        [sys.executable, os.path.join(CHILDREN_DIR, "pinger.py"),
         str(server.address()["port"]), "300"],
        stdout=subprocess.PIPE,
    )
    popen.append(pinger)
    try:
        with gevent.Timeout(3 * TIMEOUT, AssertionError("the pinger never finished")):
            while pinger.poll() is None:
                gevent.sleep(0.05)
        figures = json.loads(pinger.stdout.read())
        flooding = child.exit_code is None
    finally:
        ticker.kill()
        server.close()
    assert flooding, "the flood ended before the pings: the test measured nothing"
    assert sum(gaps) > 10_000, "too little flood between the ticks to judge"
    assert max(gaps) <= 2 * READ_BATCH, f"{max(gaps)} messages handled in one turn of the hub"
    assert figures["p99"] < 50, f"pings waited behind the flood: {figures}"
    assert child.wait(timeout=TIMEOUT) == 0
