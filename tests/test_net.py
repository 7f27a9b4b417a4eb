"""``geventfork.net``: Server, Socket and connect, in one process and with children.

The README's `net` API and its differences from Node, point by point, on real sockets bound
to 127.0.0.1 port 0.  The clients are plain (patched) sockets, so that what
they see is what the kernel delivered: a reply, a clean EOF or a reset.
"""

import logging
import socket

import gevent
import pytest
from gevent import socket as gsocket
from gevent.event import AsyncResult, Event
from gevent.queue import Queue

from geventfork import net
from geventfork.events import EventEmitter
from helpers import TIMEOUT, read_to_eof, recorder, reset, wait_until


# -- helpers ------------------------------------------------------------------


@pytest.fixture
def listen():
    """``listen(**options)``: a listening ``Server`` on 127.0.0.1:0.

    Its accepted sockets queue up in ``server.accepted``; the servers and
    every socket they accepted are closed when the test ends.
    """
    servers, sockets = [], []

    def start(**options):
        server = net.create_server(**options)
        server.accepted = Queue()
        server.on("connection", server.accepted.put)
        server.on("connection", sockets.append)
        server.listen(0, "127.0.0.1")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
    for conn in sockets:
        conn.destroy()


@pytest.fixture
def connect():
    """``connect(server_or_port, source="127.0.0.1")``: a client socket, closed at the end."""
    made = []

    def open_client(server, source="127.0.0.1"):
        port = server if isinstance(server, int) else server.address()["port"]
        sock = socket.socket()
        made.append(sock)
        sock.settimeout(TIMEOUT)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        return sock

    yield open_client
    for sock in made:
        sock.close()


def accepted(server):
    """The next socket ``server`` accepted."""
    return server.accepted.get(timeout=TIMEOUT)


# -- Server ---------------------------------------------------------------------


def test_listen_on_port_zero_and_address(listen):
    server = listen()
    address = server.address()
    assert address["address"] == "127.0.0.1"
    assert address["family"] == "IPv4"
    assert address["port"] > 0
    assert server.listening


def test_listening_event_and_callback():
    server = net.create_server()
    on_event, on_callback = Event(), Event()
    server.on("listening", on_event.set)
    server.listen(0, "127.0.0.1", callback=on_callback.set)
    try:
        assert on_event.wait(timeout=TIMEOUT)
        assert on_callback.wait(timeout=TIMEOUT)
    finally:
        server.close()


def test_blocking_connection_handler_does_not_stall_accept(listen, connect):
    server = listen()
    release = Event()
    handled = []

    @server.on("connection")
    def on_connection(conn):
        handled.append(conn)
        if len(handled) == 1:
            release.wait(TIMEOUT)  # blocks this greenlet only
        conn.end(b"hi")

    first, second = connect(server), connect(server)
    assert read_to_eof(second) == b"hi"  # while the first handler still blocks
    release.set()
    assert read_to_eof(first) == b"hi"


def test_close_emits_close_once_connections_ended(listen, connect):
    server = listen()
    port = server.address()["port"]
    connect(server)
    conn = accepted(server)
    closed, on_callback = Event(), Event()
    server.on("close", closed.set)
    server.close(callback=on_callback.set)
    assert not server.listening
    assert server.address() is None
    with pytest.raises(ConnectionRefusedError):
        connect(port)
    gevent.sleep(0.05)  # a chance to misbehave: 'close' must wait for conn
    assert not closed.is_set()
    conn.destroy()
    assert closed.wait(timeout=TIMEOUT)
    assert on_callback.wait(timeout=TIMEOUT)


def test_connections_counts_open_connections(listen, connect):
    server = listen()
    assert server.connections == 0
    connect(server)
    client = connect(server)
    conns = {c.remote_port: c for c in (accepted(server), accepted(server))}
    assert server.connections == 2
    second = conns.pop(client.getsockname()[1])
    conns.popitem()[1].destroy()
    assert server.connections == 1
    second.end()
    assert read_to_eof(client) == b""
    client.close()  # which ends second's linger
    wait_until(lambda: server.connections == 0, "the ended socket to close")


def test_connections_is_none_once_a_socket_was_sent(listen, connect, spawn_child):
    child = spawn_child("handle_echo.py")
    server = listen(pause_on_connect=True)
    client = connect(server)
    connect(server)
    conns = {c.remote_port: c for c in (accepted(server), accepted(server))}
    conn = conns[client.getsockname()[1]]
    assert server.connections == 2
    acked = AsyncResult()
    child.send("handle", conn, callback=acked.set)
    assert server.connections is None  # the parent can no longer count
    assert acked.get(timeout=TIMEOUT) is None
    assert server.connections is None
    client.sendall(b"ping\n")
    assert read_to_eof(client) == b"child ping\n"


def test_max_connections_drops_the_extra_connection(listen, connect):
    server = listen()
    server.max_connections = 1
    drops = recorder(server, "drop")
    kept = connect(server)
    accepted(server)
    extra = connect(server)
    assert read_to_eof(extra) == b""  # closed at once
    event, info = drops.get(timeout=TIMEOUT)
    assert info["remote_address"] == "127.0.0.1"
    assert info["remote_port"] == extra.getsockname()[1]
    assert info["local_port"] == server.address()["port"]
    assert server.connections == 1
    assert server.accepted.empty()
    kept.sendall(b"still here")  # the first one is untouched


# -- Socket ---------------------------------------------------------------------


def test_socket_attributes(listen, connect):
    server = listen()
    client = connect(server)
    conn = accepted(server)
    assert conn.remote_address == "127.0.0.1"
    assert conn.remote_port == client.getsockname()[1]
    assert conn.remote_family == "IPv4"
    assert conn.local_address == "127.0.0.1"
    assert conn.local_port == server.address()["port"]
    assert (conn.bytes_read, conn.bytes_written) == (0, 0)
    conn.on("data", lambda data: conn.write(data.upper()))
    client.sendall(b"hello")
    assert client.recv(5) == b"HELLO"
    assert (conn.bytes_read, conn.bytes_written) == (5, 5)
    assert not conn.destroyed


def test_data_end_and_close_events(listen, connect):
    server = listen()
    client = connect(server)
    conn = accepted(server)
    events = recorder(conn, "data", "end", "close", "error")
    client.sendall(b"abc")
    assert events.get(timeout=TIMEOUT) == ("data", b"abc")
    client.shutdown(socket.SHUT_WR)
    assert events.get(timeout=TIMEOUT) == ("end",)
    # allow_half_open is False: our side ends too, and then closes.
    assert events.get(timeout=TIMEOUT) == ("close", False)
    assert read_to_eof(client) == b""
    assert conn.destroyed


def test_write_and_end_with_callbacks(listen, connect):
    server = listen()
    client = connect(server)
    conn = accepted(server)
    written, finished = AsyncResult(), Event()
    assert conn.write("é-", callback=written.set) is True  # str: UTF-8
    conn.end(b"bye", callback=finished.set)
    assert written.get(timeout=TIMEOUT) is None
    assert finished.wait(timeout=TIMEOUT)
    assert read_to_eof(client) == "é-".encode() + b"bye"
    assert conn.bytes_written == len("é-".encode()) + 3


def test_write_returns_false_then_drain(listen, connect):
    server = listen()
    client = connect(server)
    conn = accepted(server)
    drained = Event()
    conn.on("drain", drained.set)
    payload = b"x" * (8 << 20)  # more than the kernel buffers hold
    assert conn.write(payload) is False
    assert not drained.is_set()
    received = 0
    with gevent.Timeout(TIMEOUT):
        while received < len(payload):
            received += len(client.recv(1 << 20))
    assert drained.wait(timeout=TIMEOUT)
    assert conn.bytes_written == len(payload)


def test_set_encoding_emits_str(listen, connect):
    server = listen()
    client = connect(server)
    conn = accepted(server)
    chunks = recorder(conn, "data")
    conn.set_encoding("utf-8")
    encoded = "héllo €".encode()
    client.sendall(encoded[:2])  # ends inside "é"
    wait_until(lambda: conn.bytes_read == 2, "the first chunk to be read")
    client.sendall(encoded[2:])
    text = ""
    with gevent.Timeout(TIMEOUT):
        while text != "héllo €":
            event, data = chunks.get()
            assert isinstance(data, str)
            text += data


def test_set_timeout_emits_timeout(listen, connect):
    server = listen()
    connect(server)
    conn = accepted(server)
    on_event, on_callback = Event(), Event()
    conn.on("timeout", on_event.set)
    conn.set_timeout(0.05, on_callback.set)
    assert on_event.wait(timeout=TIMEOUT)
    assert on_callback.wait(timeout=TIMEOUT)
    assert not conn.destroyed  # 'timeout' only tells; it does not close
    conn.set_timeout(0)


def test_set_no_delay_and_keep_alive(listen, connect):
    server = listen()
    connect(server)
    conn = accepted(server)
    sock = conn.socket
    conn.set_no_delay()
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    conn.set_no_delay(False)
    assert not sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    conn.set_keep_alive(True, initial_delay=7)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
    conn.set_keep_alive(False)
    assert not sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)


def test_pause_on_connect_reads_nothing_until_resumed(listen, connect):
    server = listen(pause_on_connect=True)
    client = connect(server)
    conn = accepted(server)
    chunks = recorder(conn, "data")
    assert conn.is_paused
    client.sendall(b"hello")
    # Wait until the bytes are in the kernel, then give a reader every chance.
    with gevent.Timeout(TIMEOUT):
        assert conn.socket.recv(5, socket.MSG_PEEK) == b"hello"
    for _ in range(5):
        gevent.sleep(0)
    assert conn.socket.recv(5, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"hello"
    assert conn.bytes_read == 0
    assert chunks.empty()
    conn.resume()
    assert chunks.get(timeout=TIMEOUT) == ("data", b"hello")


def test_end_without_reading_the_request_never_resets(listen, connect):
    server = listen(pause_on_connect=True)
    server.on("connection", lambda conn: conn.end(b"reply"))
    # More than the kernel buffers take before the server closes: measured
    # here, a plain shutdown + close reset 200 of 200 such clients (2 MiB:
    # none, as the kernel still hands over the reply and EOF it queued).
    request = b"x" * (4 << 20)
    for i in range(200):
        client = connect(server)
        try:
            client.sendall(request)
            assert read_to_eof(client) == b"reply", i
        except (ConnectionResetError, BrokenPipeError) as exc:
            pytest.fail(f"connection {i} was reset: {exc!r}")
        client.close()
    wait_until(lambda: server.connections == 0, "every socket to close")


def test_socket_error_without_listener_is_logged_and_destroys(listen, connect, caplog):
    server = listen()
    client = connect(server)
    conn = accepted(server)
    closes = recorder(conn, "close", "data")
    client.sendall(b"x")
    assert closes.get(timeout=TIMEOUT) == ("data", b"x")  # it is reading now
    with caplog.at_level(logging.WARNING, logger="geventfork.net"):
        reset(client)
        assert closes.get(timeout=TIMEOUT) == ("close", True)
    assert conn.destroyed
    assert any("error" in record.getMessage() for record in caplog.records), caplog.text


def test_emitted_error_without_listener_is_not_raised(listen, connect, caplog):
    server = listen()
    connect(server)
    conn = accepted(server)
    with caplog.at_level(logging.WARNING, logger="geventfork.net"):
        conn.emit("error", ValueError("boom"))
    assert "boom" in caplog.text
    assert conn.destroyed


def test_client_reset_does_not_crash_the_worker(listen, connect, spawn_child):
    child = spawn_child("handle_echo.py")
    replies = Queue()
    child.on("message", lambda message, handle: replies.put(message))
    server = listen(pause_on_connect=True)
    client = connect(server)
    client.sendall(b"abc")
    child.send("watch", accepted(server))
    assert replies.get(timeout=TIMEOUT) == {"read": 3}  # the worker is reading
    reset(client)
    assert replies.get(timeout=TIMEOUT) == {"closed": True}
    child.send("still alive?")
    assert replies.get(timeout=TIMEOUT) == {"echo": "still alive?"}
    assert child.exit_code is None and child.signal_code is None


# -- connect --------------------------------------------------------------------


def test_connect_talks_to_a_server(listen):
    server = listen()
    connected = Event()
    conn = net.connect(server.address()["port"], callback=connected.set)
    try:
        assert connected.wait(timeout=TIMEOUT)
        assert conn.remote_port == server.address()["port"]
        assert conn.remote_address == "127.0.0.1"
        peer = accepted(server)
        assert peer.remote_port == conn.local_port
        events = recorder(conn, "data", "end", "close")
        peer.on("data", lambda data: peer.end(data[::-1]))
        conn.write(b"olleh")
        assert events.get(timeout=TIMEOUT) == ("data", b"hello")
        assert events.get(timeout=TIMEOUT) == ("end",)
        assert events.get(timeout=TIMEOUT) == ("close", False)
    finally:
        conn.destroy()


def test_connect_comes_before_data_even_from_a_blocking_listener():
    """A 'message' listener connects, listens for 'data' and blocks; the
    server's banner arrives at once: 'connect' must still come first."""
    listener = gsocket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def banner():
        peer, _ = listener.accept()
        with peer:
            peer.sendall(b"banner")
            gevent.sleep(0.5)

    server = gevent.spawn(banner)
    seen = []

    class Source(EventEmitter):
        pass

    def connect_and_block(_):
        conn = net.connect(listener.getsockname()[1], callback=lambda: seen.append("connect"))
        conn.on("data", seen.append)
        gevent.sleep(0.1)  # a handler's blocking code
        conn.destroy()

    source = Source()
    source.on("message", connect_and_block)
    try:
        source.emit("message", None)
        wait_until(lambda: len(seen) == 2, "'connect' and the banner")
        assert seen == ["connect", b"banner"]
    finally:
        server.kill()
        listener.close()


def test_connect_to_a_refused_port_raises():
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        with pytest.raises(OSError):
            net.connect(bound.getsockname()[1])


def test_listen_on_a_port_in_use_raises_and_keeps_no_callback(listen) -> None:
    taken = listen()
    server = net.create_server()
    with pytest.raises(OSError):
        server.listen(taken.address()["port"], "127.0.0.1", callback=lambda: None)
    assert server.listener_count("listening") == 0
    assert not server.listening


def test_a_server_out_of_fds_pauses_accepting_with_one_line_and_serves_everyone(spawn_child):
    child = spawn_child("few_fds_server.py", silent=True)
    port = int(child.stdout.readline())
    clients = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(12)]
    try:
        assert [read_to_eof(client) for client in clients] == [b"hi"] * 12  # all, in the end
    finally:
        for client in clients:
            client.close()
    child.kill()
    child.wait(TIMEOUT)
    err = child.stderr.read().decode()
    assert err.count("accepting paused for 0.1 s: Too many open files") == 1, err
    assert "Traceback" not in err, err
