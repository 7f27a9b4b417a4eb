"""Tests for ``_channel.Channel`` over real AF_UNIX socketpairs, in one process.

Both ends live in this (gevent-patched) process: either two ``Channel``s, or
one ``Channel`` and a ``RawPeer``, the bare socket at the other end driven by
hand with ``_wire`` to play a slow, broken or hostile peer. Handles are real
sockets passed over SCM_RIGHTS, and each test proves a received handle is the
very endpoint that was sent by doing I/O through it. The conftest fails any
test that leaves an fd open, which is how "closed, never leaked" is checked.
"""

from __future__ import annotations

import _socket
import base64
import contextlib
import fcntl
import json
import os
import pickle
import resource
import socket
import subprocess
import sys
import termios
from array import array
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent import monkey
from gevent import socket as gsocket
from gevent.event import Event
from gevent.queue import Queue

from geventfork import _handles, _wire, net
from geventfork._channel import HANDLE_WEIGHT, HIGH_WATER_MARK, READ_BATCH, Channel
from geventfork._owner import ChannelOwner
from geventfork._serialization import JSON, PICKLE, Codec
from geventfork.errors import (
    ChannelBusyError,
    ChannelClosedError,
    HandleLostError,
    InvalidHandleTypeError,
    ProtocolError,
    SerializationError,
)
from helpers import (
    CHILDREN_DIR,
    TIMEOUT,
    KiB,
    MiB,
    closed_socket,
    fd_count,
    fd_table,
    take_one,
    wait_until,
)

CODECS = [pytest.param(JSON, id="json"), pytest.param(PICKLE, id="pickle")]
_StdlibSocket = monkey.get_original("socket", "socket")


# ---------------------------------------------------------------- helpers


class End:
    """A ``Channel`` with a recording owner (what ``ChildProcess`` would be)."""

    def __init__(self, sock: Any, codec: Codec = JSON, **options: Any) -> None:
        self.messages: Queue = Queue()
        self.errors: Queue = Queue()
        self.closed = Event()
        self.closed_count = 0
        self.ch = Channel(sock, self, codec, **options)

    # The owner interface Channel reports to.
    receiving = False  # every message goes to the listeners (no recv())

    def on_channel_message(self, message: Any, handle: Any) -> None:
        self.messages.put((message, handle))

    def on_channel_error(self, err: BaseException) -> None:
        self.errors.put(err)

    def on_channel_closed(self) -> None:
        self.closed_count += 1
        self.closed.set()

    def on_channel_read(self) -> None:
        pass

    # What the tests wait for.
    def message(self) -> Any:
        """The next message, which must carry no handle."""
        message, handle = take_one(self.messages, "message")
        assert handle is None
        return message

    def error(self) -> BaseException:
        return take_one(self.errors, "error from the channel")

    def wait_closed(self) -> None:
        """The owner heard the close, and the channel let go of its socket."""
        assert self.closed.wait(timeout=TIMEOUT), "the owner never heard the channel close"
        # 'disconnect' may come before the close (half-closed, reading the
        # peer's last ACKs): wait for the close itself.
        wait_until(lambda: self.ch.fileno() == -1, "the channel to close its socket")
        # Private: a read watcher left active on the closed fd shows in no
        # behaviour, only as a leak (and a callback on a reused fd number).
        assert not self.ch._read_watcher.active, "the read watcher outlived the channel"
        assert not self.ch._resume.active, "the resume watcher outlived the channel"
        assert self.ch.fileno() == -1


class Callbacks:
    """``send()`` callbacks that record their calls: ``calls[key]`` lists the errs."""

    def __init__(self) -> None:
        self.calls: dict = {}

    def new(self, key: Any) -> Callable[[Any], None]:
        self.calls[key] = []
        return self.calls[key].append

    def wait(self, key: Any) -> Any:
        """The err of ``key``'s (first) call."""
        wait_until(lambda: self.calls[key], f"the callback of {key!r}")
        return self.calls[key][0]

    def wait_all(self) -> None:
        wait_until(lambda: all(self.calls.values()), "every callback")


class RawPeer:
    """The far end of a channel with no ``Channel``: raw frames, by hand."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.decoder = _wire.Decoder()

    def send(self, data: bytes, fds: tuple = ()) -> None:
        """Write ``data`` in one ``sendmsg``, with ``fds`` on its first byte."""
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))] if fds else []
        assert self.sock.sendmsg([data], anc) == len(data)

    def send_message(self, message: Any, fds: tuple = (), **header: Any) -> None:
        """Write one MESSAGE frame (JSON) announcing ``len(fds)`` fds."""
        frame = _wire.Frame(_wire.MESSAGE, JSON.dumps(message), fds, JSON.ident, **header)
        self.send(*_wire.encode(frame))

    def frame(self) -> _wire.Frame:
        """Read the next frame; the caller owns its fds."""
        with gevent.Timeout(TIMEOUT, AssertionError("no frame reached the raw peer")):
            while True:
                event = self.decoder.next_event()
                if isinstance(event, _wire.Frame):
                    return event
                assert event is _wire.NEED_DATA, "the channel closed"
                data, anc, flags, _ = self.sock.recvmsg(
                    256 * KiB, socket.CMSG_SPACE(16 * 4), socket.MSG_CMSG_CLOEXEC
                )
                assert not flags & socket.MSG_CTRUNC
                fds = [fd for *_, raw in anc for fd in array("i", raw)]
                if data or fds:
                    self.decoder.receive_data(data, fds)
                else:
                    self.decoder.receive_eof()

    def wait_eof(self) -> None:
        """The channel closed its end: the next read is EOF."""
        with gevent.Timeout(TIMEOUT, AssertionError("the channel never closed its end")):
            while True:
                data = self.sock.recv(64 * KiB)
                if not data:
                    return

    def close(self) -> None:
        self.decoder.close()
        self.sock.close()


@pytest.fixture
def opened():
    """``opened(*socks)``: close these sockets when the test ends; returns them."""
    socks: list = []

    def register(*new: Any) -> Any:
        socks.extend(new)
        return new[0] if len(new) == 1 else new

    yield register
    for sock in socks:
        sock.close()


@pytest.fixture
def pair(opened):
    """``pair(codec=JSON, b_codec=None, **options) -> (End, End)``, connected."""
    ends: list = []

    def make(codec: Codec = JSON, b_codec: Codec | None = None, **options: Any) -> tuple:
        left, right = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        opened(left, right)  # a Channel that failed to start would leak them
        a = End(left, codec, **options)
        b = End(right, b_codec or codec, **options)
        ends.extend((a, b))
        return a, b

    yield make
    for end in ends:
        end.ch.close()


@pytest.fixture
def raw_pair(opened):
    """``raw_pair(**options) -> (End, RawPeer)``, connected."""
    peers: list = []
    ends: list = []

    def make(codec: Codec = JSON, **options: Any) -> tuple:
        left, right = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        opened(left)
        end = End(left, codec, **options)
        peer = RawPeer(gsocket.socket(fileno=right.detach()))
        ends.append(end)
        peers.append(peer)
        return end, peer

    yield make
    for end in ends:
        end.ch.close()
    for peer in peers:
        peer.close()


def close_fds(fds) -> None:
    for fd in fds:
        os.close(fd)


def unix_pair(opened, kind: str = "gevent", sock_type: int = socket.SOCK_STREAM) -> tuple:
    """A connected AF_UNIX pair: ``(handle, other)``; ``handle`` is of ``kind``."""
    handle, other = opened(*socket.socketpair(socket.AF_UNIX, sock_type))  # gevent sockets
    if kind == "stdlib":  # an unpatched socket.socket, as a library might hold
        handle = opened(_StdlibSocket(fileno=handle.detach()))
    return handle, other


def recv_exactly(sock: Any, size: int) -> bytes:
    data = b""
    with gevent.Timeout(TIMEOUT, AssertionError(f"{size} bytes never arrived")):
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            assert chunk, "EOF"
            data += chunk
    return data


def assert_connected(mine: Any, theirs: Any) -> None:
    """Bytes flow both ways between ``mine`` and ``theirs``: one connection."""
    mine.sendall(b"ping")
    assert recv_exactly(theirs, 4) == b"ping"
    theirs.sendall(b"pong")
    assert recv_exactly(mine, 4) == b"pong"


# ---------------------------------------------------------------- messages


def _both_ways_cases():
    common = [None, 0, -3, 2**64, 1.25, "", "h\u00e9llo \u2603", [1, [2]], {"a": {"b": None}}]
    for codec in (JSON, PICKLE):
        for i, message in enumerate(common):
            yield pytest.param(codec, message, id=f"{codec.name}-{i}")
    for i, message in enumerate([(1, "t"), {1, 2}, b"\x00\xff", frozenset("ab")]):
        yield pytest.param(PICKLE, message, id=f"pickle-only-{i}")


@pytest.mark.parametrize("codec, message", list(_both_ways_cases()))
def test_messages_go_both_ways(pair, codec: Codec, message: Any) -> None:
    a, b = pair(codec)
    assert a.ch.send(message) is True
    got = b.message()
    assert got == message and type(got) is type(message)
    assert b.ch.send(got) is True
    assert a.message() == message


def test_a_frame_in_another_codec_is_a_protocol_error_that_closes(pair) -> None:
    """A channel decodes only its own codec, whatever a frame's codec byte says."""
    a, b = pair(JSON, b_codec=PICKLE)
    b.ch.send(("from", b"pickle"))
    err = a.error()
    assert isinstance(err, ProtocolError)
    assert "codec 2 (pickle)" in str(err) and "speaks json" in str(err), err
    a.wait_closed()
    b.wait_closed()


@pytest.mark.parametrize("codec", [0, 77])
def test_a_frame_in_an_unknown_codec_closes_the_channel(raw_pair, codec: int) -> None:
    end, peer = raw_pair(JSON)
    peer.send(_wire.encode(_wire.Frame(_wire.MESSAGE, b"1", codec=codec))[0])
    err = end.error()
    assert isinstance(err, ProtocolError) and f"codec {codec} (unknown)" in str(err)
    end.wait_closed()


def test_a_pickle_frame_on_a_json_channel_runs_no_code(raw_pair, tmp_path) -> None:
    """A peer cannot make a JSON channel unpickle: the pickle's code never runs."""
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    end, peer = raw_pair(JSON)
    payload = pickle.dumps(Exploit())
    peer.send(_wire.encode(_wire.Frame(_wire.MESSAGE, payload, codec=PICKLE.ident))[0])
    err = end.error()
    assert isinstance(err, ProtocolError) and "pickle" in str(err)
    assert err.data.startswith(payload[:16])
    end.wait_closed()
    gevent.sleep(0.1)
    assert not marker.exists(), "the peer's pickle ran code"
    assert end.messages.empty()


@pytest.mark.parametrize("codec", CODECS)
def test_order_of_10000_messages(pair, codec: Codec) -> None:
    a, b = pair(codec)
    count = 10_000
    for i in range(count):
        a.ch.send({"seq": i, "pad": "x" * (i % 50)})
    assert [b.message()["seq"] for _ in range(count)] == list(range(count))


@pytest.mark.parametrize("codec", CODECS)
def test_16_mib_message(pair, codec: Codec) -> None:
    a, b = pair(codec)
    blob = os.urandom(12 * MiB)
    message = base64.b64encode(blob).decode() if codec is JSON else blob  # 16 MiB either way
    cbs = Callbacks()
    a.ch.send(message, callback=cbs.new("big"))
    assert b.message() == message
    assert cbs.wait("big") is None


def test_send_returns_false_past_the_high_water_mark(pair) -> None:
    a, b = pair()
    half = "x" * (HIGH_WATER_MARK // 2)
    # What the kernel takes is not queued: sends return True until its
    # buffer is full (nobody reads until this greenlet yields) and then two
    # halves (2 x (64 KiB + quotes + header) >= 128 KiB) are queued.
    assert a.ch.send("first") is True
    results = [a.ch.send(half) for _ in range(32)]
    assert False in results, "32 x 64 KiB never passed the high-water mark"
    first_false = results.index(False)
    assert first_false >= 2
    assert not any(results[first_false:]), "past the mark, until the loop runs"
    assert a.ch.send("small") is False
    assert [b.message() for _ in range(34)] == ["first", *[half] * 32, "small"]
    # Everything went to the kernel: below the mark again.
    assert a.ch.send("small") is True
    assert b.message() == "small"


def _unread(channel: Channel) -> int:
    """Bytes waiting in the kernel for ``channel`` to read."""
    return array("i", fcntl.ioctl(channel.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def test_a_send_with_nothing_queued_reaches_the_kernel_at_once(pair) -> None:
    a, b = pair()
    a.ch.send("now")
    assert _unread(b.ch) == _wire.HEADER.size + len(b'"now"')  # before this greenlet yields
    assert b.message() == "now"


def test_a_handle_with_nothing_queued_reaches_the_kernel_at_once(pair, opened) -> None:
    a, b = pair()
    ours, _theirs = (opened(s) for s in socket.socketpair())
    a.ch.send("h", ours, callback=lambda err: None)
    assert _unread(b.ch) == _wire.HEADER.size + len(b'"h"')  # before this greenlet yields
    message, received = take_one(b.messages, "the handle")
    opened(received)
    assert message == "h"


def test_a_long_run_of_sends_is_flushed_before_the_sender_yields(pair) -> None:
    # The peer can start on a long burst while the sender is still encoding it.
    a, b = pair()
    for i in range(30_000):
        a.ch.send(i)
    assert _unread(b.ch) > 64 * 1024
    assert [b.message() for _ in range(30_000)] == list(range(30_000))


def test_callback_gets_none_exactly_once_per_message(pair) -> None:
    a, b = pair()
    cbs = Callbacks()
    for i in range(1000):
        a.ch.send(i, callback=cbs.new(i))
    a.ch.send("x" * MiB, callback=cbs.new("big"))  # more than one sendmsg takes
    for _ in range(1001):
        b.message()
    cbs.wait_all()
    # One more round trip, so a late duplicate call would have happened by now.
    a.ch.send("last", callback=cbs.new("last"))
    assert b.message() == "last" and cbs.wait("last") is None
    assert all(calls == [None] for calls in cbs.calls.values())


# ---------------------------------------------------------------- closing


@pytest.mark.parametrize("peer_reads_first", [False, True], ids=["unread", "half-read"])
def test_queued_messages_fail_when_the_peer_closes(raw_pair, peer_reads_first: bool) -> None:
    a, peer = raw_pair()
    cbs = Callbacks()
    a.ch.send("first", callback=cbs.new("first"))
    a.ch.send("x" * (4 * MiB), callback=cbs.new("big"))  # far more than the socket buffer
    a.ch.send("after", callback=cbs.new("after"))
    if peer_reads_first:
        assert peer.frame().payload == b'"first"'
        assert cbs.wait("first") is None
    peer.close()
    cbs.wait_all()
    for key in ("big", "after"):
        [err] = cbs.calls[key]
        assert isinstance(err, ChannelClosedError), (key, err)
        assert err.code == "ERR_IPC_CHANNEL_CLOSED"
    a.wait_closed()
    assert a.closed_count == 1
    assert not a.ch.connected


@pytest.mark.parametrize("with_callback", [True, False])
def test_send_after_close_raises_at_once(pair, with_callback: bool) -> None:
    """A channel known to be closed refuses a send at once, whatever its callback."""
    a, _ = pair()
    a.ch.close()
    cbs = Callbacks()
    with pytest.raises(ChannelClosedError):
        a.ch.send("late", callback=cbs.new("late") if with_callback else None)
    gevent.sleep(0.05)
    assert cbs.calls.get("late", []) == [] and a.errors.empty()


def test_close_fails_unacknowledged_handles(raw_pair, opened) -> None:
    a, peer = raw_pair()
    handle, other = unix_pair(opened)
    cbs = Callbacks()
    a.ch.send("h", handle, callback=cbs.new("h"))
    close_fds(peer.frame().fds)  # the peer got it but never acknowledges
    a.ch.close()
    assert isinstance(cbs.wait("h"), ChannelClosedError)
    assert_connected(handle, other)  # still the sender's
    a.wait_closed()


def test_close_fails_what_the_kernel_has_not_taken(raw_pair) -> None:
    a, peer = raw_pair()
    cbs = Callbacks()
    a.ch.send("x" * (4 * MiB), callback=cbs.new("big"))  # never read: cannot all be written
    a.ch.close()
    assert isinstance(cbs.wait("big"), ChannelClosedError)
    a.wait_closed()
    assert a.closed_count == 1


def test_disconnect_flushes_the_queue_then_both_ends_close(pair) -> None:
    a, b = pair()
    cbs = Callbacks()
    for i in range(100):
        a.ch.send(i, callback=cbs.new(i))
    big = "y" * (2 * MiB)  # takes many sendmsg calls and the write watcher
    a.ch.send(big, callback=cbs.new("big"))
    a.ch.disconnect()
    assert not a.ch.connected
    assert [b.message() for _ in range(100)] == list(range(100))
    assert b.message() == big
    cbs.wait_all()
    assert all(calls == [None] for calls in cbs.calls.values())
    a.wait_closed()
    b.wait_closed()
    assert (a.closed_count, b.closed_count) == (1, 1)
    a.ch.disconnect()  # a second disconnect is a no-op
    assert a.closed_count == 1


def test_disconnect_with_a_handle_in_flight_still_acknowledges_it(pair, opened) -> None:
    a, b = pair()
    handle, other = unix_pair(opened)
    cbs = Callbacks()
    a.ch.send("h", handle, callback=cbs.new("h"))
    a.ch.disconnect()
    message, received = take_one(b.messages, "the handle")
    opened(received)
    assert message == "h"
    assert cbs.wait("h") is None
    assert handle.fileno() == -1
    assert_connected(received, other)
    a.wait_closed()
    b.wait_closed()


def test_a_handle_sent_to_an_end_that_disconnected_stays_with_the_sender(pair, opened) -> None:
    a, b = pair()
    handle, other = unix_pair(opened)
    cbs = Callbacks()
    b.ch.disconnect()  # b can no longer acknowledge, so it must not take the handle
    a.ch.send("h", handle, callback=cbs.new("h"))
    assert isinstance(cbs.wait("h"), ChannelClosedError)
    assert b.messages.empty()
    assert handle.fileno() != -1
    assert_connected(handle, other)
    a.wait_closed()
    b.wait_closed()


def test_fileno_is_the_socket_until_closed() -> None:
    left, right = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    fd = left.fileno()
    a = End(left)
    try:
        assert a.ch.fileno() == fd
    finally:
        a.ch.close()
        right.close()
    assert a.ch.fileno() == -1
    assert left.fileno() == -1  # the channel closed the socket it owned


# ---------------------------------------------------------------- handles


def _unix_stream(opened, kind):
    handle, other = unix_pair(opened, kind)
    return handle, lambda received: assert_connected(received, other)


def _unix_dgram(opened, kind):
    handle, other = unix_pair(opened, kind, socket.SOCK_DGRAM)

    def prove(received):
        received.send(b"dgram")
        assert other.recv(16) == b"dgram"

    return handle, prove


def _udp(opened, kind):
    handle = opened(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    handle.bind(("127.0.0.1", 0))
    address = handle.getsockname()
    sender = opened(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))

    def prove(received):
        assert received.getsockname() == address
        sender.sendto(b"datagram", address)
        with gevent.Timeout(TIMEOUT, AssertionError("the datagram never arrived")):
            assert received.recvfrom(64)[0] == b"datagram"

    return handle, prove


def _tcp_connection(opened, kind):
    listener = opened(socket.socket())
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = opened(socket.create_connection(listener.getsockname()))
    handle = opened(listener.accept()[0])

    def prove(received):
        assert received.getpeername() == client.getsockname()
        assert_connected(received, client)

    return handle, prove


def _tcp_listener(opened, kind):
    handle = opened(socket.socket())
    handle.bind(("127.0.0.1", 0))
    handle.listen()
    address = handle.getsockname()

    def prove(received):
        client = opened(socket.create_connection(address))
        with gevent.Timeout(TIMEOUT, AssertionError("the connection was never accepted")):
            conn = opened(received.accept()[0])
        assert_connected(conn, client)

    return handle, prove


UNIX, INET, STREAM, DGRAM = socket.AF_UNIX, socket.AF_INET, socket.SOCK_STREAM, socket.SOCK_DGRAM
HANDLES = [
    pytest.param(_unix_stream, "gevent", UNIX, STREAM, id="unix-stream-gevent"),
    pytest.param(_unix_stream, "stdlib", UNIX, STREAM, id="unix-stream-stdlib"),
    pytest.param(_unix_dgram, "gevent", UNIX, DGRAM, id="unix-dgram"),
    pytest.param(_udp, "gevent", INET, DGRAM, id="udp"),
    pytest.param(_tcp_connection, "gevent", INET, STREAM, id="tcp"),
    pytest.param(_tcp_listener, "gevent", INET, STREAM, id="tcp-listener"),
]


@pytest.mark.parametrize("make, kind, family, type_", HANDLES)
@pytest.mark.parametrize("keep_open", [False, True], ids=["closed", "keep_open"])
def test_socket_handles_pass_over_scm_rights(
    pair, opened, make, kind, family, type_, keep_open: bool
) -> None:
    a, b = pair()
    handle, prove = make(opened, kind)
    cbs = Callbacks()
    options = {"keep_open": True} if keep_open else None
    assert a.ch.send({"n": 1}, handle, options, callback=cbs.new("h")) is True
    message, received = take_one(b.messages, "the handle")
    opened(received)
    assert message == {"n": 1}
    assert isinstance(received, gsocket.socket)
    assert (received.family, received.type) == (family, type_)
    assert not received.get_inheritable()  # MSG_CMSG_CLOEXEC: no leak into exec'd children
    prove(received)
    assert cbs.wait("h") is None
    # The sender's copy went once the ACK came, unless keep_open.
    assert (handle.fileno() == -1) is not keep_open
    if keep_open:
        prove(handle)  # both copies are the same endpoint and both work


def _connected_pair(family: int) -> tuple:
    """Two connected stream sockets of ``family`` (gevent sockets)."""
    if family == socket.AF_UNIX:
        return gsocket.socketpair()
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    listener = gsocket.socket(family, socket.SOCK_STREAM)
    with contextlib.closing(listener):
        listener.bind((host, 0))
        listener.listen(1)
        client = gsocket.create_connection(listener.getsockname()[:2])
        return listener.accept()[0], client


@pytest.mark.parametrize(
    "family", [socket.AF_INET, socket.AF_INET6, socket.AF_UNIX], ids=["tcp4", "tcp6", "unix"]
)
def test_a_net_socket_arrives_with_its_family(pair, opened, family: int) -> None:
    # TCP sockets say their family on the wire (the receiver skips asking the
    # kernel); any other stream is asked. Either way the socket works.
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6")
    a, b = pair()
    ours, peer = (opened(s) for s in _connected_pair(family))
    a.ch.send("conn", net.Socket(ours), callback=lambda err: None)
    _message, received = take_one(b.messages, "the socket")
    assert isinstance(received, net.Socket)
    assert (received.socket.family, received.socket.type) == (family, socket.SOCK_STREAM)
    received.end(b"hello")
    with gevent.Timeout(TIMEOUT):
        assert peer.recv(100) == b"hello"
    peer.close()


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["tcp4", "tcp6"])
def test_a_received_tcp_socket_has_no_delay(pair, opened, family: int) -> None:
    """As Node's HTTP server and gunicorn do: no 40 ms wait for a delayed ACK
    behind a worker's second write. ``set_no_delay(False)`` undoes it."""
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6")
    a, b = pair()
    ours, peer = (opened(s) for s in _connected_pair(family))
    assert not ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    a.ch.send("conn", net.Socket(ours), callback=lambda err: None)
    _message, received = take_one(b.messages, "the socket")
    sock = received.socket
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    received.set_no_delay(False)
    assert not sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    received.destroy()


def test_many_handles_interleaved_with_messages_each_keep_their_own_fd(pair, opened) -> None:
    # More fds than one sendmsg may carry (253), each frame with its own: the
    # write batching must never move an fd to another frame.
    a, b = pair()
    cbs = Callbacks()
    inodes = []
    count = 300
    for i in range(count):
        handle, _ = unix_pair(opened)
        inodes.append(os.fstat(handle.fileno()).st_ino)
        a.ch.send({"i": i}, handle, callback=cbs.new(("handle", i)))
        a.ch.send({"plain": i}, callback=cbs.new(("plain", i)))
    for i in range(count):
        message, received = take_one(b.messages, f"handle {i}")
        opened(received)
        assert message == {"i": i}
        assert os.fstat(received.fileno()).st_ino == inodes[i]  # the very same socket
        assert b.message() == {"plain": i}
    cbs.wait_all()
    assert all(calls == [None] for calls in cbs.calls.values())


def test_handle_callback_waits_for_the_ack(raw_pair, opened) -> None:
    a, peer = raw_pair()
    handle, _ = unix_pair(opened)
    cbs = Callbacks()
    a.ch.send("h", handle, callback=cbs.new("h"))
    a.ch.send("after", callback=cbs.new("after"))
    frame = peer.frame()
    close_fds(frame.fds)
    assert (frame.handle, len(frame.fds)) == (_handles.RAW, 1) and frame.ident
    # "after" went in the same sendmsg and is done; "h" waits for its ACK.
    assert cbs.wait("after") is None
    assert peer.frame().payload == b'"after"'
    assert cbs.calls["h"] == [] and handle.fileno() != -1
    peer.send(_wire.encode_ack(frame.ident))
    assert cbs.wait("h") is None
    assert handle.fileno() == -1


@pytest.mark.parametrize("closer", ["raw-peer-after-reading", "channel-peer-before-reading"])
def test_handle_in_flight_when_the_receiver_closes_stays_with_the_sender(
    pair, raw_pair, opened, closer: str
) -> None:
    handle, other = unix_pair(opened)
    cbs = Callbacks()
    if closer == "raw-peer-after-reading":
        a, peer = raw_pair()
        a.ch.send("h", handle, callback=cbs.new("h"))
        close_fds(peer.frame().fds)
        peer.close()
    else:
        a, b = pair()
        a.ch.send("h", handle, callback=cbs.new("h"))
        b.ch.close()  # before a's queue is even flushed
    err = cbs.wait("h")
    assert isinstance(err, ChannelClosedError)
    assert handle.fileno() != -1
    assert_connected(handle, other)  # unread and usable: send it elsewhere
    a.wait_closed()


def test_nack_leaves_the_handle_with_the_sender(raw_pair, opened) -> None:
    a, peer = raw_pair()
    handle, other = unix_pair(opened)
    cbs = Callbacks()
    a.ch.send("h", handle, callback=cbs.new("h"))
    frame = peer.frame()
    close_fds(frame.fds)
    peer.send(_wire.encode_ack(frame.ident, _wire.NACK))
    assert isinstance(cbs.wait("h"), ProtocolError)
    assert_connected(handle, other)
    a.ch.send("still open")
    assert peer.frame().payload == b'"still open"'


def test_ack_of_an_unknown_message_is_reported(raw_pair) -> None:
    a, peer = raw_pair()
    peer.send(_wire.encode_ack(12345))
    err = a.error()
    assert isinstance(err, ProtocolError) and "12345" in str(err)


# ---------------------------------------------------------------- caller mistakes


def _file(opened):
    f = open(os.devnull, "rb")  # noqa: SIM115 - closed by the fixture
    opened(f)
    return f


@pytest.mark.parametrize(
    "make_handle",
    [
        pytest.param(lambda opened: 3, id="int-fd"),
        pytest.param(lambda opened: "socket", id="str"),
        pytest.param(_file, id="file"),
        pytest.param(closed_socket, id="closed-socket"),
    ],
)
def test_invalid_handle_raises_before_anything_is_queued(pair, opened, make_handle) -> None:
    a, b = pair()
    cbs = Callbacks()
    with pytest.raises(InvalidHandleTypeError) as info:
        a.ch.send("bad", make_handle(opened), callback=cbs.new("bad"))
    assert info.value.code == "ERR_INVALID_HANDLE_TYPE"
    assert isinstance(info.value, TypeError)
    assert_nothing_queued_and_still_usable(a, b, cbs)


def assert_nothing_queued_and_still_usable(a: End, b: End, cbs: Callbacks) -> None:
    """The send that raised left nothing behind, and the channel works on.

    Frames go out in order, so anything the failed send had queued (bytes,
    or a handle waiting for its ACK) would reach the peer before "next".
    """
    a.ch.send("next", callback=cbs.new("next"))
    assert b.message() == "next"  # the first thing the peer sees
    assert cbs.wait("next") is None
    assert cbs.calls["bad"] == []  # a raised send never calls back
    assert a.ch.connected
    assert b.messages.empty()


@pytest.mark.parametrize(
    "codec, make_message",
    [
        pytest.param(JSON, object, id="json-object"),
        pytest.param(JSON, lambda: {1, 2}, id="json-set"),
        pytest.param(PICKLE, lambda: lambda: None, id="pickle-lambda"),
        pytest.param(PICKLE, lambda: (i for i in ()), id="pickle-generator"),
    ],
)
@pytest.mark.parametrize("with_handle", [False, True], ids=["no-handle", "handle"])
def test_unserialisable_message_raises_before_anything_is_queued(
    pair, opened, codec: Codec, make_message, with_handle: bool
) -> None:
    a, b = pair(codec)
    handle, other = unix_pair(opened) if with_handle else (None, None)
    cbs = Callbacks()
    with pytest.raises(SerializationError) as info:
        a.ch.send(make_message(), handle, callback=cbs.new("bad"))
    assert isinstance(info.value, TypeError)
    assert info.value.code == "ERR_IPC_SERIALIZATION"
    assert_nothing_queued_and_still_usable(a, b, cbs)
    if with_handle:
        assert_connected(handle, other)  # untouched


def test_unserialisable_message_leaves_a_net_socket_reading(pair, opened) -> None:
    # send() must fail before it takes the socket over (stops its reader).
    a, _ = pair()
    mine, other = unix_pair(opened)
    sock = net.Socket(mine)
    data: Queue = Queue()
    sock.on("data", data.put)
    try:
        with pytest.raises(SerializationError):
            a.ch.send(object(), sock)
        other.sendall(b"still read here")
        assert take_one(data, "data on the net.Socket") == b"still read here"
    finally:
        sock.destroy()


def test_message_over_max_size_raises_at_send(pair) -> None:
    a, b = pair(max_size=1024)
    cbs = Callbacks()
    with pytest.raises(SerializationError, match="1025 bytes"):
        a.ch.send("x" * 1023, callback=cbs.new("bad"))  # 1025 bytes with the quotes
    assert_nothing_queued_and_still_usable(a, b, cbs)
    a.ch.send("x" * 1022)  # exactly the limit
    assert b.message() == "x" * 1022


def test_message_over_the_receivers_max_size_is_a_protocol_error(opened) -> None:
    left, right = opened(*_socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM))
    a, b = End(left), End(right, max_size=1024)
    try:
        a.ch.send("x" * 2000)
        err = b.error()
        assert isinstance(err, ProtocolError) and "1024" in str(err)
        b.wait_closed()
        a.wait_closed()
    finally:
        a.ch.close()
        b.ch.close()


# ---------------------------------------------------------------- broken peers


def _header(size=0, kind=_wire.MESSAGE, codec=1, handle=0, flags=0, nfds=0, ident=0) -> bytes:
    return _wire.HEADER.pack(size, kind, codec, handle, flags, nfds, ident)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xff" * 14, id="garbage"),
        pytest.param(_header(kind=9), id="unknown-kind"),
        pytest.param(_header(size=3, kind=_wire.ACK, ident=1) + b"abc", id="ack-with-payload"),
        pytest.param(_header(size=_wire.MAX_FRAME_SIZE + 1), id="oversized"),
        pytest.param(_header(nfds=_wire.MAX_FDS + 1, ident=1), id="too-many-fds"),
        pytest.param(
            _header(size=2, handle=_handles.RAW, nfds=1, ident=1) + b"{}", id="fd-missing"
        ),
    ],
)
def test_malformed_frame_is_a_protocol_error_and_closes(raw_pair, data: bytes) -> None:
    a, peer = raw_pair()
    peer.send(data)
    err = a.error()
    assert isinstance(err, ProtocolError)
    assert err.code == "ERR_IPC_PROTOCOL"
    assert err.data == data[:64]
    a.wait_closed()
    assert a.closed_count == 1
    peer.wait_eof()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_header(size=10)[:5], id="inside-header"),
        pytest.param(_header(size=10) + b'"abc', id="inside-payload"),
    ],
)
def test_eof_inside_a_frame_is_a_protocol_error(raw_pair, data: bytes) -> None:
    a, peer = raw_pair()
    peer.send(data)
    peer.sock.shutdown(socket.SHUT_WR)
    err = a.error()
    assert isinstance(err, ProtocolError) and "EOF" in str(err)
    a.wait_closed()


def test_eof_between_frames_is_a_clean_close(raw_pair) -> None:
    a, peer = raw_pair()
    peer.send_message("last words")
    peer.sock.shutdown(socket.SHUT_WR)
    assert a.message() == "last words"
    a.wait_closed()
    assert a.errors.empty()


@pytest.mark.parametrize(
    "payload, codec",
    [
        pytest.param(b"{not json", JSON.ident, id="bad-json"),
        pytest.param(b"\xff\xfe", JSON.ident, id="bad-utf8"),
    ],
)
def test_undecodable_message_is_reported_and_skipped(raw_pair, payload: bytes, codec: int) -> None:
    # (A frame in another codec closes the channel instead: see
    # test_a_frame_in_another_codec_is_a_protocol_error_that_closes.)
    # The frame itself was sound: only that message is lost, not the channel.
    a, peer = raw_pair()
    peer.send(_header(size=len(payload), codec=codec) + payload)
    peer.send_message("next")
    assert isinstance(a.error(), ProtocolError)
    assert a.message() == "next"
    assert a.ch.connected


@pytest.fixture
def spare_fds():
    """``spare_fds(n)``: ``n`` fresh fds to send (the sender's copies are closed)."""
    made: list = []

    def make(n: int) -> tuple:
        fds = tuple(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) for _ in range(n))
        made.extend(fds)
        return fds

    yield make
    close_fds(made)


@pytest.mark.parametrize(
    "handle_type",
    [
        pytest.param(99, id="unknown-type"),
        pytest.param(_handles.RAW, id="socket-but-not-a-socket-fd"),
        pytest.param(_handles.SOCKET, id="net-socket-but-not-a-socket-fd"),
    ],
)
def test_handle_that_cannot_be_rebuilt_is_nacked_and_its_fd_closed(
    raw_pair, spare_fds, handle_type: int
) -> None:
    a, peer = raw_pair()
    fds = spare_fds(1)  # /dev/null: no socket can be made of it
    peer.send_message("h", fds, handle=handle_type, ident=7)
    assert isinstance(a.error(), ProtocolError)
    answer = peer.frame()
    assert (answer.kind, answer.ident) == (_wire.NACK, 7)
    assert a.messages.empty() and a.ch.connected
    # The fd that came with it is closed: the conftest's leak check sees to it.


def test_extra_fds_of_a_frame_are_closed(raw_pair, spare_fds, opened) -> None:
    # A frame may announce more fds than its handle needs: the rest are closed.
    a, peer = raw_pair()
    mine, other = unix_pair(opened)
    peer.send_message("h", (mine.fileno(), *spare_fds(2)), handle=_handles.RAW, ident=3)
    message, received = take_one(a.messages, "the handle")
    opened(received)
    assert message == "h"
    assert_connected(received, other)
    answer = peer.frame()
    assert (answer.kind, answer.ident) == (_wire.ACK, 3)


@pytest.mark.parametrize("then", ["another-frame", "eof"])
def test_fds_no_frame_claims_are_closed(raw_pair, spare_fds, then: str) -> None:
    a, peer = raw_pair()
    # The frame announces no fds, yet two come with its first byte.
    data, _ = _wire.encode(_wire.Frame(_wire.MESSAGE, b'"first"', codec=JSON.ident))
    peer.send(data, spare_fds(2))
    if then == "another-frame":
        peer.send_message("second")
    else:
        peer.sock.shutdown(socket.SHUT_WR)
    assert a.message() == "first"
    err = a.error()
    assert isinstance(err, ProtocolError) and "no frame claimed" in str(err)
    a.wait_closed()
    assert a.messages.empty()


def test_frame_with_more_fds_than_it_announces_is_a_protocol_error(raw_pair, spare_fds) -> None:
    a, peer = raw_pair()
    frame = _wire.Frame(_wire.MESSAGE, b"1", (0,), JSON.ident, _handles.RAW, ident=1)
    data, _ = _wire.encode(frame)  # one fd announced...
    peer.send(data, spare_fds(2))  # ...two sent
    err = a.error()
    assert isinstance(err, ProtocolError) and "2 arrived" in str(err)
    a.wait_closed()


# ---------------------------------------------------------------- MSG_CTRUNC


@contextlib.contextmanager
def fd_room(free: int):
    """Lower RLIMIT_NOFILE so that exactly ``free`` more fds can be opened.

    Process-wide, so the window is kept short and nothing but the channel
    under test runs in it (all sockets are made before).
    """
    gevent.sleep(0)  # let gevent's deferred closes happen first
    taken = set(fd_table())
    slots = [fd for fd in range(max(taken) + free + 2) if fd not in taken]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (slots[free], hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("room", [0, 1])
def test_fds_the_kernel_drops_are_nacked(raw_pair, spare_fds, room: int) -> None:
    a, peer = raw_pair()
    fds = spare_fds(2)
    with fd_room(room):
        # Only ``room`` of the 2 fds fit in the receiver: MSG_CTRUNC.
        peer.send_message("h", fds, handle=_handles.RAW, ident=5)
        err = a.error()
    assert isinstance(err, ProtocolError) and "MSG_CTRUNC" in str(err)
    answer = peer.frame()
    assert (answer.kind, answer.ident) == (_wire.NACK, 5)
    assert a.messages.empty()
    # The channel survives it (the fd that did arrive is closed).
    peer.send_message("after")
    assert a.message() == "after"


# ---------------------------------------------------------------- ChannelOwner


@pytest.fixture
def owned(opened):
    """``owned() -> (ChannelOwner, End)``: a real owner at one end, an End at the other."""
    made: list = []

    def make() -> tuple:
        left, right = opened(*_socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM))
        owner = ChannelOwner()
        owner.channel = Channel(left, owner, JSON)
        peer = End(right)
        made.extend((owner.channel, peer.ch))
        return owner, peer

    yield make
    for channel in made:
        channel.close()


def test_owner_without_a_channel() -> None:
    owner = ChannelOwner()
    assert owner.connected is False
    with pytest.raises(ChannelClosedError) as info:
        owner.send("x")
    assert info.value.code == "ERR_IPC_CHANNEL_CLOSED"
    owner.disconnect()  # nothing to do


def test_owner_emits_message_disconnect_and_error(owned) -> None:
    owner, peer = owned()
    messages: Queue = Queue()
    errors: Queue = Queue()
    disconnected = Event()
    owner.on("message", lambda message, handle: messages.put((message, handle)))
    owner.on("error", errors.put)
    owner.on("disconnect", disconnected.set)
    assert owner.connected
    peer.ch.send({"hello": 1})
    assert take_one(messages, "'message'") == ({"hello": 1}, None)
    owner.send("back")
    assert peer.message() == "back"
    os.write(peer.ch.fileno(), _wire.encode_ack(98))  # behind the peer channel's back: a bad frame
    assert isinstance(take_one(errors, "'error'"), ProtocolError)
    peer.ch.disconnect()
    assert disconnected.wait(timeout=TIMEOUT), "no 'disconnect'"
    assert not owner.connected


def test_owner_with_no_message_listener_closes_a_received_handle(owned, opened) -> None:
    owner, peer = owned()
    handle, other = unix_pair(opened)
    cbs = Callbacks()
    peer.ch.send("nobody listens", handle, callback=cbs.new("h"))
    assert cbs.wait("h") is None  # acknowledged: it reached the owner
    # Both copies are gone (ours after the ACK, the owner's unheard), so EOF.
    with gevent.Timeout(TIMEOUT, AssertionError("the received handle was leaked, not closed")):
        assert other.recv(16) == b""


# ---------------------------------------------------------------- limits
# Acknowledged sends, lost handles, back-pressure, refused fds, fairness.


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


def test_done_reaches_a_sender_that_disconnected_meanwhile(pair, opened) -> None:
    """The sender disconnects (a pool closing its workers) while the receiver
    still serves a tracked socket: the receiver hears 'disconnect' at once,
    and still tells the sender when it is done, then closes."""
    a, b = pair()
    mine, client = opened(*socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM))
    sent = net.Socket(mine, paused=True)
    done: list = []
    acked = Callbacks()
    a.ch.send("s", sent, {"keep_open": True}, acked.new("s"), on_done=lambda: done.append(1))
    _message, received = b.messages.get(timeout=TIMEOUT)
    assert acked.wait("s") is None
    a.ch.disconnect()
    assert b.closed.wait(timeout=TIMEOUT), "the receiver never heard 'disconnect'"
    assert not b.ch.connected
    gevent.sleep(0.05)
    assert done == [] and b.ch.fileno() != -1, "closed before it was done"
    received.destroy()
    wait_until(lambda: done == [1], "on_done after the sender disconnected")
    a.wait_closed()
    b.wait_closed()
    sent.destroy()


def test_done_is_never_sent_for_an_untracked_socket(raw_pair, opened) -> None:
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
    before = fd_count()
    a.ch.send("socket", conn)
    frame = peer.frame()
    close_fds(frame.fds)
    peer.send(_wire.encode_ack(frame.ident, _wire.NACK))
    assert client.recv(100) == b"", "no EOF"  # ended gracefully: EOF, no reset
    assert isinstance(a.error(), HandleLostError)  # to the owner, once
    wait_until(lambda: fd_count() < before, "the socket closed")
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


@pytest.mark.parametrize("how", ["nack", "peer closed"])
def test_a_lost_socket_whose_finish_listener_waits_still_closes_everything(
    raw_pair, opened, how
) -> None:
    """Ending a lost socket runs its own listeners, which may wait: the channel
    reads in the hub, so it must not end the socket there. Every fd is let go,
    the client gets EOF and the failure is reported, whether the receiver
    refused the socket or went away."""
    a, peer = raw_pair()
    conn, client = net_connection(opened)
    finished = Event()

    def on_finish() -> None:
        gevent.sleep(0.01)  # a listener that waits
        finished.set()

    conn.on("finish", on_finish)
    before = fd_count()
    a.ch.send("socket", conn)
    frame = peer.frame()
    close_fds(frame.fds)
    if how == "nack":
        peer.send(_wire.encode_ack(frame.ident, _wire.NACK))
        expected: type = HandleLostError
    else:
        peer.close()
        expected = ChannelClosedError
        a.wait_closed()  # the channel's own socket too
    assert client.recv(100) == b"", "no EOF"
    assert finished.wait(timeout=TIMEOUT), "the 'finish' listener never ran"
    assert isinstance(a.error(), expected)
    wait_until(lambda: fd_count() < before, "the socket closed")


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
    """The kernel refusing a message's fd (EBADF) fails that message, not the
    channel, and the refused handles no longer count against the high-water
    mark (more of them than the mark holds would otherwise stop it for good)."""
    a, peer = raw_pair()
    cbs = Callbacks()
    a.ch.send("x" * (4 * 1024 * 1024), callback=cbs.new("big"))  # fills the socket: queued
    doomed = HIGH_WATER_MARK // HANDLE_WEIGHT + 2
    for n in range(doomed):
        handle, _other = unix_pair(opened)
        a.ch.send("doomed", handle, callback=cbs.new(n))
        os.close(handle.detach())  # its fd is gone before the channel writes it
    a.ch.send("after", callback=cbs.new("after"))
    with gevent.Timeout(TIMEOUT):
        while True:
            frame = peer.frame()
            if frame.payload == b'"after"':
                break
    for n in range(doomed):
        err = cbs.wait(n)
        assert isinstance(err, OSError) and not isinstance(err, ChannelClosedError), err
    assert cbs.wait("big") is None and cbs.wait("after") is None
    assert a.ch.connected
    assert a.ch.send("light") is True, "refused handles still count as awaiting their ACK"


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


def test_past_max_queued_send_raises_and_queues_nothing(raw_pair) -> None:
    a, _peer = raw_pair(max_queued=256 * 1024)  # the peer reads nothing
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
    before = fd_count()
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
    wait_until(lambda: fd_count() <= before, "the received fds closed")


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
        [
            sys.executable,
            os.path.join(CHILDREN_DIR, "pinger.py"),
            str(server.address()["port"]),
            "300",
        ],
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
