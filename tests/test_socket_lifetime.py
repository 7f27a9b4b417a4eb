"""Every connection has an owner until it is closed, and its end is reported.

The README's rules for sockets nobody owns ("Differences from Node.js"): a ``'connection'`` (or
``'message'``) handler that raises has its socket ended gracefully at once;
a ``net.Socket`` nobody references any more is closed by a finalizer; and
``on_done`` (what lets a Pool close its kept copy) fires exactly once
whichever way this process finishes with the connection. Real sockets on
127.0.0.1, real processes; fds counted in ``/proc``; clients must see a
clean EOF (a reset fails the test) within a bound.
"""

import _socket
import gc
import logging
import socket
import subprocess
import sys
from contextlib import contextmanager

import gevent
import pytest
from gevent.event import AsyncResult
from gevent.pywsgi import WSGIServer
from gevent.queue import Queue

from geventfork import net
from geventfork._channel import Channel
from geventfork._owner import ChannelOwner
from geventfork._serialization import JSON
from geventfork.errors import ChannelClosedError, InvalidHandleTypeError
from helpers import (
    TIMEOUT,
    fd_count,
    fd_table,
    hub_errors,
    inbox,
    python_env,
    read_to_eof,
    reset,
    take_one,
    wait_until,
)

CLIENTS = 100
REQUEST = b"GET / HTTP/1.0\r\n\r\n"


# -- helpers --------------------------------------------------------------------


@contextmanager
def gc_disabled():
    """Prove a close does not wait for the cycle collector."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@contextmanager
def serving(handler, **options):
    """A ``Server`` on 127.0.0.1:0 whose only ``'connection'`` listener is ``handler``."""
    server = net.create_server(handler, **options)
    server.listen(0, "127.0.0.1")
    try:
        yield server
    finally:
        server.close()


def client_of(server):
    """A connected client socket (the caller closes it)."""
    sock = socket.create_connection(("127.0.0.1", server.address()["port"]), timeout=TIMEOUT)
    return sock


def all_get_eof(clients):
    """Each client, having sent a request nobody reads, gets a clean EOF (no reset)."""
    for i, client in enumerate(clients):
        try:
            assert read_to_eof(client) == b"", f"client {i} got data"
        except ConnectionResetError as exc:  # pragma: no cover - the failure we guard against
            pytest.fail(f"client {i} was reset: {exc!r}")


@pytest.fixture
def pair():
    """``pair()``: (server side as a plain ``_socket.socket``, client), both TCP on 127.0.0.1."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    made = []

    def make():
        client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        conn, _ = listener.accept()
        made.append(client)
        # What a received net.Socket starts from: a plain socket owning the fd.
        return _socket.socket(fileno=conn.detach()), client

    yield make
    listener.close()
    for sock in made:
        sock.close()


@pytest.fixture
def channel():
    """``channel() -> (sender, receiver)``: the two ``ChannelOwner`` ends of a real channel."""
    made = []

    def make():
        ends = []
        for sock in _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM):
            owner = ChannelOwner()
            owner.channel = Channel(sock, owner, JSON)
            made.append(owner.channel)
            ends.append(owner)
        return tuple(ends)

    yield make
    for ch in made:
        ch.close()


class Counter:
    """An ``on_done`` that counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1


# -- handlers that leave their socket behind -----------------------------------------


def test_connections_a_handler_ignores_are_closed_gracefully():
    before = fd_count()
    with serving(lambda conn: None) as server:
        clients = [client_of(server) for _ in range(CLIENTS)]
        for client in clients:
            client.sendall(REQUEST)  # unread bytes: a plain close would reset
        all_get_eof(clients)
        for client in clients:
            client.close()
        gc.collect()
        wait_until(lambda: server.connections == 0, "every connection counted out")
        wait_until(lambda: fd_count() == before + 1, "fds back to the listener's")  # + the listener
    assert fd_count() == before


def test_a_connection_kept_only_by_a_cycle_is_closed_by_the_collector():
    kept = []

    def handler(conn):
        conn.on("data", lambda data: conn)  # a cycle: refcounting alone frees nothing
        conn.pause()
        kept.append(id(conn))

    before = fd_count()
    with serving(handler) as server:
        client = client_of(server)
        client.sendall(REQUEST)
        wait_until(lambda: kept, "the handler to run")
        gc.collect()
        all_get_eof([client])
        client.close()
        wait_until(lambda: server.connections == 0, "the connection counted out")
        wait_until(lambda: fd_count() == before + 1, "fds back to the listener's")


def test_connections_whose_handler_raises_are_ended_at_once_without_the_collector():
    def handler(conn):
        raise RuntimeError("handler failed on purpose")

    before = fd_count()
    with hub_errors() as reported, gc_disabled(), serving(handler) as server:
        clients = [client_of(server) for _ in range(CLIENTS)]
        for client in clients:
            client.sendall(REQUEST)
        all_get_eof(clients)
        for client in clients:
            client.close()
        wait_until(lambda: server.connections == 0, "every connection counted out")
        wait_until(lambda: fd_count() == before + 1, "fds back to the listener's")
        assert len(reported) == CLIENTS  # each failure still reported
    assert fd_count() == before


def test_a_raising_handler_leaves_alone_a_socket_it_destroyed_or_ended():
    seen = Queue()

    def handler(conn):
        conn.on("close", lambda had_error: seen.put("close"))
        conn.end(b"bye")
        raise RuntimeError("after end()")

    with hub_errors(), serving(handler) as server:
        client = client_of(server)
        assert read_to_eof(client) == b"bye"  # ended once, its data intact
        client.close()
        assert seen.get(timeout=TIMEOUT) == "close"
        wait_until(lambda: server.connections == 0, "the connection counted out")


def test_a_raising_handler_leaves_alone_a_socket_it_sent(spawn_child):
    child = spawn_child("handle_echo.py")
    replies = Queue()
    child.on("message", lambda message, handle: replies.put(message))

    def handler(conn):
        child.send("watch", conn)
        raise RuntimeError("after send()")

    with hub_errors(), serving(handler, pause_on_connect=True) as server:
        client = client_of(server)
        client.sendall(b"abc")
        assert replies.get(timeout=TIMEOUT) == {"read": 3}  # the child has it, open
        client.sendall(b"de")
        assert replies.get(timeout=TIMEOUT) == {"read": 2}
        client.close()
        assert replies.get(timeout=TIMEOUT) == {"closed": False}


def test_a_handler_that_closes_its_socket_attribute_counts_the_connection_out():
    def handler(conn):
        reader = conn.socket.makefile("rb")
        conn.socket.sendall(reader.readline())
        conn.socket.close()  # gevent.pywsgi style: the makefile still holds it
        reader.close()

    with serving(handler) as server:
        client = client_of(server)
        client.sendall(b"echo\n")
        assert read_to_eof(client) == b"echo\n"
        client.close()
        wait_until(lambda: server.connections == 0, "the connection counted out")


def test_a_message_handler_that_raises_ends_its_socket(spawn_child):
    child = spawn_child("handle_raise.py", silent=True)
    ready = Queue()
    child.on("message", lambda message, handle: ready.put(message))
    assert ready.get(timeout=TIMEOUT) == "ready"
    child_fds = fd_count(child.pid)
    with serving(None, pause_on_connect=True) as server:
        conns = Queue()
        server.on("connection", conns.put)
        client = client_of(server)
        client.sendall(REQUEST)
        child.send("take it", conns.get(timeout=TIMEOUT))
        all_get_eof([client])  # the child ended it; the parent's copy went on the ACK
        client.close()
    wait_until(lambda: fd_count(child.pid) == child_fds, "the child's fds back to baseline")


# -- on_done ----------------------------------------------------------------------


def test_on_done_after_destroy(pair):
    raw, client = pair()
    done = Counter()
    conn = net.Socket(raw, on_done=done)
    conn.destroy()
    assert done.calls == 1
    conn.destroy()
    assert done.calls == 1
    assert read_to_eof(client) == b""


def test_on_done_after_end_and_linger(pair):
    raw, client = pair()
    done = Counter()
    conn = net.Socket(raw, on_done=done)
    client.sendall(REQUEST)
    conn.end(b"bye")
    assert read_to_eof(client) == b"bye"
    assert done.calls == 0  # still draining the client's bytes
    client.close()
    wait_until(lambda: done.calls == 1, "on_done once the peer closed")
    gevent.sleep(0.05)
    assert done.calls == 1


def test_on_done_when_the_gevent_socket_is_closed(pair):
    raw, client = pair()
    done = Counter()
    conn = net.Socket(raw, on_done=done)
    conn.socket.sendall(b"hi")
    conn.socket.close()
    assert done.calls == 1  # at once: a Pool closes its copy now
    assert read_to_eof(client) == b"hi"
    conn.destroy()
    assert done.calls == 1


def test_on_done_when_the_last_makefile_reference_goes(pair):
    raw, client = pair()
    done = Counter()
    conn = net.Socket(raw, on_done=done)
    writer = conn.socket.makefile("wb")
    conn.socket.close()
    assert done.calls == 0  # the file object still uses the fd
    writer.write(b"via makefile")
    writer.close()
    assert done.calls == 1
    assert read_to_eof(client) == b"via makefile"


def test_on_done_when_the_gevent_socket_is_detached(pair):
    raw, client = pair()
    done = Counter()
    conn = net.Socket(raw, on_done=done)
    fd = conn.socket.detach()
    assert done.calls == 1
    _socket.close(fd)  # gevent's os.close may defer it indefinitely
    assert read_to_eof(client) == b""


def test_on_done_for_gevent_pywsgi(pair):
    raw, client = pair()
    done = Counter()
    conn = net.Socket(raw, on_done=done)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    WSGIServer(("127.0.0.1", 0), app, log=None).handle(conn.socket, ("127.0.0.1", 0))
    assert done.calls == 1  # as soon as pywsgi is through with it
    assert read_to_eof(client).endswith(b"ok")


def test_on_done_when_a_socket_is_collected_unclosed(pair):
    raw, client = pair()
    done = Counter()
    before = fd_count()
    with gc_disabled():
        net.Socket(raw, on_done=done)  # dropped at once
        del raw
        wait_until(lambda: done.calls == 1, "on_done after collection")
    assert read_to_eof(client) == b""
    client.close()
    wait_until(lambda: fd_count() == before - 2, "the socket closed")  # and the client
    gevent.sleep(0.05)
    assert done.calls == 1


def test_on_done_when_its_gevent_socket_is_collected_unclosed(pair):
    raw, client = pair()
    done = Counter()
    conn = net.Socket(raw, on_done=done)
    sock = conn.socket
    del conn, raw
    gc.collect()
    assert done.calls == 0  # the gevent socket is still in use
    client.sendall(REQUEST)
    assert sock.recv(100) == REQUEST
    client.sendall(REQUEST)  # unread when it goes: no reset all the same
    del sock
    gc.collect()
    wait_until(lambda: done.calls == 1, "on_done after collection")
    all_get_eof([client])


def test_on_done_when_sent_on_and_acknowledged(pair, channel):
    raw, client = pair()
    sender, receiver = channel()
    received = inbox(receiver, handles=True)
    done, acked = Counter(), AsyncResult()
    conn = net.Socket(raw, on_done=done)
    sender.send("yours", conn, callback=acked.set)
    assert done.calls == 0  # in flight until the receiver acknowledges
    assert acked.get(timeout=TIMEOUT) is None
    assert done.calls == 1
    assert conn.destroyed
    _, theirs = take_one(received, "the socket")
    theirs.destroy()  # the last copy
    assert read_to_eof(client) == b""


def test_no_on_done_while_a_sent_copy_is_kept_open(pair, channel):
    raw, client = pair()
    sender, receiver = channel()
    received = inbox(receiver, handles=True)
    done, acked = Counter(), AsyncResult()
    conn = net.Socket(raw, on_done=done)
    sender.send("shared", conn, {"keep_open": True}, acked.set)
    assert acked.get(timeout=TIMEOUT) is None
    assert done.calls == 0 and not conn.destroyed
    _, theirs = take_one(received, "the socket")
    theirs.destroy()
    conn.destroy()
    assert done.calls == 1
    assert read_to_eof(client) == b""


def test_a_raising_on_done_is_logged_not_raised(pair, caplog):
    raw, client = pair()

    def on_done():
        raise RuntimeError("on_done failed on purpose")

    conn = net.Socket(raw, on_done=on_done)
    with caplog.at_level(logging.ERROR, logger="geventfork.net"):
        conn.destroy()
    assert "on_done failed on purpose" in caplog.text
    assert conn.destroyed


def test_on_done_must_be_callable(pair):
    raw, client = pair()
    with pytest.raises(TypeError, match="on_done must be callable"):
        net.Socket(raw, on_done="nope")
    raw.close()


# -- in flight ----------------------------------------------------------------------


def test_a_socket_in_flight_cannot_be_handed_off_again(pair, channel):
    raw, client = pair()
    sender, receiver = channel()
    received = inbox(receiver, handles=True)
    conn, acked = net.Socket(raw), AsyncResult()
    sender.send("first", conn, callback=acked.set)
    with pytest.raises(ValueError, match="already being sent"):
        sender.send("again", conn)
    assert acked.get(timeout=TIMEOUT) is None  # the first send went through
    message, theirs = take_one(received, "the socket")
    assert message == "first"
    theirs.destroy()
    with pytest.raises(InvalidHandleTypeError):
        sender.send("after", conn)  # our copy is gone
    assert received.empty()


def test_a_failed_hand_off_leaves_the_socket_paused_unread_and_sendable(pair, channel):
    raw, client = pair()
    sender, receiver = channel()
    receiver.disconnect()  # it can no longer acknowledge, so the hand-off fails
    conn, failed = net.Socket(raw, paused=True), AsyncResult()
    client.sendall(b"unread")
    sender.send("h", conn, callback=failed.set)
    assert isinstance(failed.get(timeout=TIMEOUT), ChannelClosedError)
    assert conn.is_paused and conn.bytes_read == 0 and not conn.destroyed
    # Ours again: it can be sent elsewhere, every byte still in the kernel.
    sender, receiver = channel()
    received = inbox(receiver, handles=True)
    acked = AsyncResult()
    sender.send("again", conn, callback=acked.set)
    assert acked.get(timeout=TIMEOUT) is None
    message, theirs = take_one(received, "the socket")
    assert message == "again"
    assert theirs.socket.recv(100) == b"unread"
    theirs.destroy()


def test_destroy_while_in_flight_closes_once_the_hand_off_is_settled(pair, channel):
    raw, client = pair()
    sender, receiver = channel()
    receiver.disconnect()  # the hand-off will fail, and give the socket back
    done, failed = Counter(), AsyncResult()
    conn = net.Socket(raw, on_done=done)
    fd = conn.socket.fileno()
    ours = fd_table()[fd]
    sender.send("h", conn, callback=failed.set)
    conn.destroy()
    assert conn.destroyed and done.calls == 0
    assert fd_table().get(fd) == ours  # the channel may still need it: still open
    assert isinstance(failed.get(timeout=TIMEOUT), ChannelClosedError)
    assert done.calls == 1
    assert fd_table().get(fd) != ours  # closed once given back


def test_a_socket_whose_gevent_socket_was_closed_cannot_be_sent(pair, channel):
    raw, client = pair()
    conn = net.Socket(raw)
    conn.socket.close()
    sender, _ = channel()
    with pytest.raises(InvalidHandleTypeError, match="closed"):
        sender.send("h", conn)


# -- the peer in the reset warning ------------------------------------------------------


def test_the_reset_warning_names_the_peer_from_accept(caplog):
    closed = Queue()

    def handler(conn):
        conn.on("data", lambda data: None)
        conn.on("close", closed.put)

    with serving(handler) as server, caplog.at_level(logging.WARNING, logger="geventfork.net"):
        client = client_of(server)
        port = client.getsockname()[1]
        client.sendall(b"x")
        gevent.sleep(0.05)
        reset(client)
        assert closed.get(timeout=TIMEOUT) is True
    assert f"(127.0.0.1:{port})" in caplog.text, caplog.text
    assert "None" not in caplog.text


def test_the_reset_warning_of_a_received_socket_names_its_peer(spawn_child):
    child = spawn_child("handle_echo.py", silent=True)
    replies = Queue()
    child.on("message", lambda message, handle: replies.put(message))
    with serving(None, pause_on_connect=True) as server:
        conns = Queue()
        server.on("connection", conns.put)
        client = client_of(server)
        port = client.getsockname()[1]
        client.sendall(b"abc")
        child.send("watch", conns.get(timeout=TIMEOUT))
        assert replies.get(timeout=TIMEOUT) == {"read": 3}
        reset(client)
        assert replies.get(timeout=TIMEOUT) == {"closed": True}
    with gevent.Timeout(TIMEOUT, AssertionError("no warning line from the child")):
        line = child.stderr.readline().decode()
    assert f"(127.0.0.1:{port})" in line, line


# -- through a real channel ----------------------------------------------------------


@pytest.mark.parametrize(
    "how, reply",
    [("close", b"bye"), ("wsgi", b"ok"), ("ignore", b""), ("end", b"bye")],
)
def test_on_done_crosses_the_channel_so_the_sender_can_close_its_copy(spawn_child, how, reply):
    child = spawn_child("socket_done.py")
    replies = Queue()
    child.on("message", lambda message, handle: replies.put(message))
    assert replies.get(timeout=TIMEOUT) == "ready"
    child_fds = fd_count(child.pid)
    done = Counter()
    with serving(None, pause_on_connect=True) as server:
        conns = Queue()
        server.on("connection", conns.put)
        client = client_of(server)
        if how == "wsgi":
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        conn = conns.get(timeout=TIMEOUT)
        # The Pool's way: keep a copy, close it once the worker is done.
        child.channel.send(how, conn, {"keep_open": True}, on_done=lambda: (done(), conn.destroy()))
        assert replies.get(timeout=TIMEOUT) == "served"
        # For "close" and "wsgi", only the sender's copy holds the connection
        # open until on_done; "end" and "ignore" shut it down themselves.
        assert read_to_eof(client).endswith(reply)
        client.close()  # which ends an "end" linger
        wait_until(lambda: done.calls == 1, "on_done from the child")
    wait_until(lambda: fd_count(child.pid) == child_fds, "the child's fds back to baseline")
    assert done.calls == 1


def test_a_socket_in_flight_on_a_real_channel_cannot_be_sent_again(spawn_child):
    child = spawn_child("socket_done.py")
    replies = Queue()
    child.on("message", lambda message, handle: replies.put(message))
    assert replies.get(timeout=TIMEOUT) == "ready"
    with serving(None, pause_on_connect=True) as server:
        conns = Queue()
        server.on("connection", conns.put)
        client = client_of(server)
        conn = conns.get(timeout=TIMEOUT)
        acked = Queue()
        child.send("end", conn, callback=acked.put)
        with pytest.raises(ValueError, match="already being sent"):
            child.send("end", conn)
        assert acked.get(timeout=TIMEOUT) is None  # the first send is untouched
        assert replies.get(timeout=TIMEOUT) == "served"
        assert read_to_eof(client) == b"bye"
        client.close()


def test_the_reset_warning_names_the_peer_the_sender_knew(spawn_child):
    # The client is gone before the child sees the socket, so the child's
    # kernel can no longer say who it was: the parent's hand-off told it.
    child = spawn_child("handle_echo.py", silent=True)
    replies = Queue()
    child.on("message", lambda message, handle: replies.put(message))
    with serving(None, pause_on_connect=True) as server:
        conns = Queue()
        server.on("connection", conns.put)
        client = client_of(server)
        client_port = client.getsockname()[1]
        client.sendall(b"abc")
        conn = conns.get(timeout=TIMEOUT)
        reset(client)  # before the child ever sees the socket
        gevent.sleep(0.05)
        child.send("watch", conn)
        events = [replies.get(timeout=TIMEOUT)]
        while events[-1] != {"closed": True}:
            events.append(replies.get(timeout=TIMEOUT))
    with gevent.Timeout(TIMEOUT, AssertionError("no warning line from the child")):
        line = child.stderr.readline().decode()
    assert f"(127.0.0.1:{client_port})" in line, line


# -- Ctrl-C during a finalizer ----------------------------------------------------------

_INTERRUPTED_IN_DEL = """
import socket, sys
import gevent
from geventfork import _stream, net

def interrupted(self):
    raise KeyboardInterrupt  # as a Ctrl-C landing while the finalizer runs

_stream.Socket._collected = interrupted
left, right = socket.socketpair()
net.Socket(left)  # collected at once: its __del__ gets the KeyboardInterrupt
print("collected", flush=True)
gevent.sleep(30)
print("the Ctrl-C was lost", flush=True)
"""


def test_a_ctrl_c_that_lands_in_a_sockets_finalizer_is_not_lost(tmp_path):
    """Python only prints what a ``__del__`` raises: a KeyboardInterrupt there
    would be lost and the process go on. The runner ends by SIGINT, quietly."""
    script = tmp_path / "interrupted.py"
    script.write_text(_INTERRUPTED_IN_DEL)
    done = subprocess.run(
        [sys.executable, "-m", "geventfork", str(script)],
        capture_output=True,
        timeout=TIMEOUT,
        env=python_env(),
    )
    assert (done.returncode, done.stdout, done.stderr) == (-2, b"collected\n", b""), done
