"""The kinds of handle ``send()`` accepts: make one, describe it, serve it.

Shared by ``tests/test_handles.py`` and the child scripts ``handle_echo.py``
and ``handle_sender.py``, so that a hand-off runs the same code whichever
process sends and whichever receives.  It is not a script of its own.

Every kind is served the same way: the client sends a line and gets back
``NAME + b" " + line`` (``NAME + b"\\n"`` for a server), where NAME says which
process answered.  Addresses travel as JSON: lists for IPv4, ``str`` for
Linux abstract Unix sockets (autobound, so no files are left behind).
"""

import socket

import gevent
from gevent import monkey
from gevent import socket as gsocket
from gevent.event import AsyncResult

from geventfork import net

#: Every kind, by name.  The ``net.*`` kinds are geventfork's own objects;
#: the rest are sockets: gevent's, or the stdlib's unpatched class.
KINDS = (
    "net.Socket",
    "net.Socket-paused",
    "net.Server",
    "tcp",
    "tcp-stdlib",
    "udp",
    "unix",
    "unix-dgram",
)
#: The kinds whose handle is an accepted connection: the client connects first.
ACCEPTED = ("net.Socket", "net.Socket-paused", "tcp", "tcp-stdlib", "unix")
#: How long any step here may wait.
TIMEOUT = 5

_SHAPES = {  # raw kinds: family, type
    "tcp": (socket.AF_INET, socket.SOCK_STREAM),
    "tcp-stdlib": (socket.AF_INET, socket.SOCK_STREAM),
    "udp": (socket.AF_INET, socket.SOCK_DGRAM),
    "unix": (socket.AF_UNIX, socket.SOCK_STREAM),
    "unix-dgram": (socket.AF_UNIX, socket.SOCK_DGRAM),
}


def shape(kind):
    """``(family, type)`` of the sockets of ``kind``."""
    return _SHAPES.get(kind, (socket.AF_INET, socket.SOCK_STREAM))


def bind_address(family):
    """Somewhere free to bind: ``127.0.0.1:0``, or an autobound abstract name."""
    return ("127.0.0.1", 0) if family == socket.AF_INET else ""


def json_address(address):
    """A socket address as JSON carries it."""
    if isinstance(address, bytes):
        return address.decode("latin-1")  # abstract: "\0" + 5 hex digits
    return list(address) if isinstance(address, tuple) else address


def socket_address(address):
    """The inverse of ``json_address``."""
    return tuple(address) if isinstance(address, list) else address


def make(kind, ready):
    """Create a handle of ``kind``.

    ``ready(address)`` is called once a client may connect or send; for the
    ``ACCEPTED`` kinds this then waits for that client and returns the
    accepted connection.
    """
    if kind.startswith("net.Socket"):
        return _accepted_net_socket(ready, paused=kind.endswith("paused"))
    if kind == "net.Server":
        server = net.create_server().listen(0, "127.0.0.1")
        ready(json_address((server.address()["address"], server.address()["port"])))
        return server
    family, type_ = shape(kind)
    sock = socket.socket(family, type_)
    sock.bind(bind_address(family))
    if type_ == socket.SOCK_DGRAM:
        ready(json_address(sock.getsockname()))
        return sock
    sock.listen(1)
    ready(json_address(sock.getsockname()))
    with gevent.Timeout(TIMEOUT):
        conn, _ = sock.accept()
    sock.close()
    if kind == "tcp-stdlib":  # the class the stdlib had before patching
        return monkey.get_original("socket", "socket")(fileno=conn.detach())
    return conn


def _accepted_net_socket(ready, paused):
    accepted = AsyncResult()
    server = net.create_server(accepted.set, pause_on_connect=paused)
    server.listen(0, "127.0.0.1")
    ready([server.address()["address"], server.address()["port"]])
    try:
        return accepted.get(timeout=TIMEOUT)
    finally:
        server.close()


def describe(handle):
    """What a receiver can tell about ``handle``, as JSON."""
    if isinstance(handle, net.Socket):
        return {"class": "net.Socket", "paused": handle.is_paused, "family": handle.remote_family}
    if isinstance(handle, net.Server):
        return {
            "class": "net.Server",
            "listening": handle.listening,
            "port": handle.address()["port"],
        }
    cls = "gevent.socket" if isinstance(handle, gsocket.socket) else type(handle).__name__
    return {"class": cls, "family": int(handle.family), "type": int(handle.type)}


def is_open(handle):
    """Whether this process's copy of ``handle`` is still open."""
    if isinstance(handle, net.Socket):
        return not handle.destroyed
    if isinstance(handle, net.Server):
        return handle.listening
    return handle.fileno() != -1


def close(handle):
    """Close this process's copy of ``handle``."""
    if isinstance(handle, net.Socket):
        handle.destroy()
    else:
        handle.close()


def serve(handle, name):
    """Answer the client (or each client, for a server) as ``name``; returns at once."""
    if isinstance(handle, net.Socket):
        _serve_net_socket(handle, name)
    elif isinstance(handle, net.Server):
        handle.on("connection", lambda conn: conn.end(name + b"\n"))
    elif handle.type == socket.SOCK_DGRAM:
        gevent.spawn(_serve_datagram, handle, name)
    else:
        gevent.spawn(_serve_stream, handle, name)


def _serve_net_socket(conn, name):
    received = bytearray()

    def on_data(data):
        received.extend(data)
        if received.endswith(b"\n"):
            conn.end(name + b" " + bytes(received))

    conn.on("data", on_data)
    conn.resume()


def _serve_stream(sock, name):
    received = bytearray()
    try:
        while not received.endswith(b"\n"):
            data = sock.recv(65536)
            if not data:
                return
            received.extend(data)
        sock.sendall(name + b" " + bytes(received))
    finally:
        sock.close()


def _serve_datagram(sock, name):
    try:
        data, address = sock.recvfrom(65536)
        sock.sendto(name + b" " + data, address)
    finally:
        sock.close()
