"""Hand-offs between real processes: every kind of handle, in both directions.

The handles `send()` accepts (README, "API"), point by point.  How
each kind is made, described and served lives in
``tests/children/handle_kinds.py``, which the child scripts import too, so
parent -> child and child -> parent run the same code.  The test process
plays the client of every handle (it connects, or sends datagrams, to the
address the sender reports) and, for child -> parent, the receiver.
"""

import importlib.util
import os
import signal
import socket

import gevent
import pytest
from gevent.event import AsyncResult

from geventfork import _handles, net
from geventfork.errors import ChannelClosedError, InvalidHandleTypeError, ProtocolError
from helpers import CHILDREN_DIR, TIMEOUT, closed_socket, inbox, proc_stat, take_one


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(CHILDREN_DIR, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kinds = _load("handle_kinds")


# -- helpers ----------------------------------------------------------------


def receive(queue):
    """The next message from an ``inbox`` (one without a handle)."""
    message, handle = take_one(queue, "message")
    assert handle is None, (message, handle)
    return message


def stop(child):
    """SIGSTOP ``child`` and wait until the kernel shows it stopped."""
    child.kill(signal.SIGSTOP)
    with gevent.Timeout(TIMEOUT, AssertionError(f"{child!r} did not stop")):
        while proc_stat(child.pid)[0] != "T":
            gevent.sleep(0.01)


def raw(handle):
    """The socket under ``handle``."""
    return handle.socket if isinstance(handle, net.Socket) else handle


def peek(sock, size):
    """Wait until ``size`` bytes are unread in ``sock``; return them, leaving them unread."""
    with gevent.Timeout(TIMEOUT, AssertionError(f"{size} bytes never arrived unread")):
        while True:
            # gevent waits here while nothing is readable
            data = sock.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            if len(data) >= size:
                return data
            gevent.sleep(0.005)  # part of it so far


def expected(kind, client):
    """What the receiver should report about a handle of ``kind``."""
    if kind.startswith("net.Socket"):
        return {"class": "net.Socket", "paused": kind.endswith("paused"), "family": "IPv4"}
    if kind == "net.Server":
        return {"class": "net.Server", "listening": True, "port": client.address[1]}
    family, type_ = kinds.shape(kind)
    return {"class": "gevent.socket", "family": int(family), "type": int(type_)}


def reply(kind, name, request=b"ping\n"):
    """What the client of a handle of ``kind`` served by ``name`` gets back."""
    return name + b"\n" if kind == "net.Server" else name + b" " + request


class Client:
    """The far end of a handle: connects, or sends datagrams, to its address."""

    def __init__(self, kind):
        self.kind = kind
        self.family, self.type = kinds.shape(kind)
        self.address = None
        self.sock = None

    def ready(self, address):
        """The sender's address; connect now if the handle will be our connection."""
        self.address = kinds.socket_address(address)
        if self.kind in kinds.ACCEPTED:
            self._open()

    def _open(self):
        self.sock = socket.socket(self.family, self.type)
        self.sock.settimeout(TIMEOUT)
        if self.type == socket.SOCK_DGRAM:
            self.sock.bind(kinds.bind_address(self.family))  # somewhere to answer
        else:
            self.sock.connect(self.address)

    def send(self, data):
        if self.sock is None:
            self._open()
        if self.type == socket.SOCK_DGRAM:
            self.sock.sendto(data, self.address)
        else:
            self.sock.sendall(data)

    def receive(self, size=None):
        """The reply: up to EOF (or ``size`` bytes), or one datagram; then close."""
        with gevent.Timeout(TIMEOUT, AssertionError("no complete reply")):
            if self.type == socket.SOCK_DGRAM:
                data = self.sock.recv(65536)
            else:
                data = b""
                while size is None or len(data) < size:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        self.close()
        return data

    def exchange(self, request=b"ping\n", size=None):
        self.send(request)
        return self.receive(size)

    def close(self):
        if self.sock is not None:
            self.sock.close()


@pytest.fixture
def clients():
    """``clients(kind)``: a new ``Client``, closed when the test ends."""
    made = []

    def new(kind):
        made.append(Client(kind))
        return made[-1]

    yield new
    for client in made:
        client.close()


def hand_to_child(child, kind, clients, options=None):
    """Make a handle of ``kind``, send it to ``child``; return ``(handle, client, acked)``."""
    client = clients(kind)
    handle = kinds.make(kind, client.ready)
    acked = AsyncResult()
    child.send("handle", handle, options, acked.set)
    return handle, client, acked


# -- every kind, both directions ----------------------------------------------


@pytest.mark.parametrize("kind", kinds.KINDS)
def test_parent_to_child(kind, spawn_child, clients):
    child = spawn_child("handle_echo.py")
    messages = inbox(child, handles=True)
    handle, client, acked = hand_to_child(child, kind, clients)
    assert receive(messages) == {"got": expected(kind, client)}
    assert acked.get(timeout=TIMEOUT) is None
    # Released on the ACK; a server stays open in both processes, as in Node.
    assert kinds.is_open(handle) == (kind == "net.Server")
    if kind == "net.Server":
        handle.close()  # so that the child answers every client
    assert client.exchange() == reply(kind, b"child")


@pytest.mark.parametrize("kind", kinds.KINDS)
def test_child_to_parent(kind, spawn_child, clients):
    child = spawn_child("handle_sender.py")
    messages = inbox(child, handles=True)
    client = clients(kind)
    child.send({"make": kind})
    client.ready(receive(messages)["address"])
    message, handle = messages.get(timeout=TIMEOUT)
    try:
        assert message == "handle"
        assert kinds.describe(handle) == expected(kind, client)
        # The child's callback ran on our ACK, and its copy was closed by then
        # (a server is kept open, as in Node; the child closes it after that).
        assert receive(messages) == {"sent": None, "open": kind == "net.Server"}
        kinds.serve(handle, b"parent")
        assert client.exchange() == reply(kind, b"parent")
    finally:
        if kinds.is_open(handle) and not isinstance(handle, net.Socket):
            kinds.close(handle)  # a net.Socket closes itself once served


def test_sent_server_still_accepts_in_the_sender(spawn_child, clients):
    child = spawn_child("handle_echo.py")
    messages = inbox(child, handles=True)
    server = net.create_server().listen(0, "127.0.0.1")
    try:
        kinds.serve(server, b"parent")
        acked = AsyncResult()
        child.send("handle", server, callback=acked.set)
        assert receive(messages)["got"]["listening"] is True
        assert acked.get(timeout=TIMEOUT) is None
        assert server.listening
        child.send("close-servers")
        assert receive(messages) == "servers-closed"
        client = clients("net.Server")
        client.ready(["127.0.0.1", server.address()["port"]])
        assert client.exchange() == b"parent\n"
    finally:
        server.close()


def test_child_sends_an_invalid_handle(spawn_child):
    child = spawn_child("handle_sender.py")
    messages = inbox(child, handles=True)
    child.send({"invalid": True})
    assert receive(messages) == {
        "raised": "InvalidHandleTypeError",
        "code": "ERR_INVALID_HANDLE_TYPE",
    }


# -- the sender's copy ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["net.Socket", "tcp"])
def test_keep_open_keeps_the_senders_copy(kind, spawn_child, clients):
    child = spawn_child("handle_echo.py")
    messages = inbox(child, handles=True)
    handle, client, acked = hand_to_child(child, kind, clients, {"keep_open": True})
    assert receive(messages)["got"]["class"]
    assert acked.get(timeout=TIMEOUT) is None
    assert kinds.is_open(handle)
    (handle.write if isinstance(handle, net.Socket) else handle.sendall)(b"sender\n")
    expected_reply = b"sender\nchild ping\n"
    assert client.exchange(size=len(expected_reply)) == expected_reply
    kinds.close(handle)


@pytest.mark.parametrize("kind", ["net.Socket", "tcp"])
def test_senders_copy_is_closed_only_after_the_ack(kind, spawn_child, clients):
    child = spawn_child("handle_echo.py")
    messages = inbox(child, handles=True)
    stop(child)  # it cannot acknowledge
    handle, client, acked = hand_to_child(child, kind, clients)
    flushed = AsyncResult()
    child.send("after", callback=flushed.set)
    assert flushed.get(timeout=TIMEOUT) is None  # so the handle is in the kernel too
    assert not acked.ready()
    assert kinds.is_open(handle)
    child.kill(signal.SIGCONT)
    assert acked.get(timeout=TIMEOUT) is None
    assert not kinds.is_open(handle)
    assert receive(messages)["got"]["class"]
    assert client.exchange() == b"child ping\n"


def test_child_killed_before_the_ack_loses_no_connection(spawn_child, clients):
    first = spawn_child("handle_echo.py")
    second = spawn_child("handle_echo.py")  # started now, to overlap the start-ups
    messages = inbox(second, handles=True)
    client = clients("net.Socket-paused")
    handle = kinds.make("net.Socket-paused", client.ready)
    client.send(b"ping\n")
    peek(handle.socket, 5)
    stop(first)
    sent = AsyncResult()
    first.send("handle", handle, callback=sent.set)
    flushed = AsyncResult()
    first.send("after", callback=flushed.set)
    assert flushed.get(timeout=TIMEOUT) is None
    first.kill(signal.SIGKILL)
    assert isinstance(sent.get(timeout=TIMEOUT), ChannelClosedError)
    assert first.wait(timeout=TIMEOUT) == -signal.SIGKILL
    # Still ours, still paused, and the request is still unread in the kernel.
    assert not handle.destroyed and handle.is_paused and handle.bytes_read == 0
    assert peek(handle.socket, 5) == b"ping\n"

    acked = AsyncResult()
    second.send("handle", handle, callback=acked.set)
    assert receive(messages)["got"]["paused"] is True
    assert acked.get(timeout=TIMEOUT) is None
    assert client.receive() == b"child ping\n"


# -- what the receiver gets ---------------------------------------------------


@pytest.mark.parametrize("kind", ["net.Socket-paused", "tcp"])
def test_bytes_sent_before_the_handoff_all_reach_the_child(kind, spawn_child, clients):
    child = spawn_child("handle_echo.py")
    messages = inbox(child, handles=True)
    client = clients(kind)
    handle = kinds.make(kind, client.ready)
    request = bytes(range(11, 256)) * 128 + b"\n"  # ~31 KiB, no newline before the end
    client.send(request)
    peek(raw(handle), len(request))
    acked = AsyncResult()
    child.send("handle", handle, callback=acked.set)
    assert receive(messages)["got"]["class"]
    assert acked.get(timeout=TIMEOUT) is None
    assert client.receive() == b"child " + request


@pytest.mark.parametrize("kind", ["net.Socket-paused", "tcp"])
def test_handle_nobody_listens_for_is_closed(kind, spawn_child, clients):
    child = spawn_child("handle_ignore.py")
    assert receive(inbox(child, handles=True)) == "ready"  # its top level has returned
    handle, client, acked = hand_to_child(child, kind, clients)
    assert acked.get(timeout=TIMEOUT) is None
    assert client.receive() == b""  # EOF, not a hang


def _destroyed_net_socket():
    ours, theirs = socket.socketpair()
    theirs.close()
    conn = net.Socket(ours)
    conn.destroy()
    return conn


BAD_HANDLES = {
    "int": lambda: 0,
    "str": lambda: "socket",
    "object": object,
    "file": lambda: open(os.devnull),
    "closed socket": closed_socket,
    "destroyed net.Socket": _destroyed_net_socket,
    "server not listening": net.create_server,
}


def test_invalid_handles_raise_before_anything_is_queued(spawn_child):
    child = spawn_child("handle_echo.py")  # one child for all: a child costs ~0.5 s
    messages = inbox(child, handles=True)
    called = AsyncResult()
    for name, make_bad in BAD_HANDLES.items():
        bad = make_bad()
        try:
            with pytest.raises(InvalidHandleTypeError) as info:
                child.send("handle", bad, callback=called.set)
        finally:
            if hasattr(bad, "close") and not isinstance(bad, net.Server):
                bad.close()
        assert info.value.code == "ERR_INVALID_HANDLE_TYPE", name
        child.send(name)
        assert receive(messages) == {"echo": name}, name  # the bad one never went out
    assert not called.ready()


@pytest.mark.parametrize(
    "flags, peer",
    [
        (_handles.TCP4, ("203.0.113.7", 51000)),
        (_handles.TCP6, ("2001:db8::1", 443)),
        (_handles.TCP4, ("2001:db8::2", 443)),  # an IPv6 client behind an IPv4 proxy
        (0, ("198.51.100.1", 80)),  # a proxied client on a Unix socket
    ],
)
def test_a_sockets_peer_rides_at_the_end_of_its_payload(flags, peer):
    trailer = _handles._pack_peer(peer)
    assert len(trailer) <= _handles.MAX_TRAILER
    payload, got = _handles.split_peer(
        _handles.SOCKET, flags | _handles.PEER, b'"message"' + trailer
    )
    assert (payload, got) == (b'"message"', peer)


def test_no_trailer_for_a_socket_whose_peer_is_unknown_or_not_an_ip_address():
    assert _handles._pack_peer(None) == b""
    assert _handles._pack_peer(("/run/app.sock", None)) == b""
    assert _handles._pack_peer(("not an address", 80)) == b""
    assert _handles.split_peer(_handles.SOCKET, _handles.TCP4, b"x") == (b"x", None)


@pytest.mark.parametrize("payload", [b"", b"12345", b"abc\x07", b"x\x04"])
def test_a_malformed_peer_trailer_is_a_protocol_error(payload):
    with pytest.raises(ProtocolError, match="no valid peer address"):
        _handles.split_peer(_handles.SOCKET, _handles.TCP6 | _handles.PEER, payload)
