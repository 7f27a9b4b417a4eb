"""Handler targets: ``socketserver`` request handlers and plain ``handle(socket, address)``.

A ``socketserver.BaseRequestHandler`` subclass is served as ``socketserver``
would: ``Handler(request, client_address, server)``, with the connection's
gevent socket as ``request`` (blocking code, monkey-patched) and a
``HandlerServer`` standing in for the server; ``--handler`` targets are
called as gevent's ``StreamServer`` calls its handle: ``handle(socket,
address)``. When the handler returns, or raises (logged with its traceback
at error level, as gunicorn logs a failed request), the connection is ended
gracefully: FIN at once, the client's unread bytes drained, never a reset.

Such connections are never handed back to the parent: the protocol is the
handler's, so nothing says when one is between requests. For the same
reason a connection that arrives with bytes already read (``head``: only a
WSGI worker hands connections back with some) is refused, ended gracefully
with a warning, rather than given to the handler through a socket wrapper
that ``makefile()`` and blocking code would see through.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

from .. import _platform

if TYPE_CHECKING:  # pragma: no cover
    from .._stream import Socket

__all__ = ["HandlerServer", "Served", "end_gracefully", "peer_address", "serve_handler"]

log = logging.getLogger("geventfork.serve")


def end_gracefully(net_socket: Socket) -> None:
    """End this worker's part in a connection, never with a reset.

    ``end()``: the write side is shut down (the client gets EOF at once),
    the client's bytes are drained until it closes (or ``END_LINGER``), then
    the fd is closed, which tells the pool the worker is done with it. A
    connection whose gevent socket the handler closed itself is only
    destroyed (the fd is gone already).
    """
    try:
        closed = net_socket.socket.fileno() < 0
    except OSError:
        closed = True
    if closed:
        net_socket.destroy()
    else:
        net_socket.end()


def peer_address(net_socket: Socket) -> Any:
    """The client's address as ``accept`` gives it: ``(host, port)``, or a
    Unix socket's (``""`` for an unnamed one).

    A TCP connection's comes with it from the parent (no system call, and
    known even once the client reset it).
    """
    host, port = net_socket.remote_address, net_socket.remote_port
    if host is not None and port is not None:
        return (host, port)
    try:
        return net_socket.socket.getpeername()
    except OSError:  # reset already: whoever uses the socket gets the error
        return ""


class HandlerServer:
    """What a ``socketserver`` request handler reads of its ``server``.

    One per address clients connected to (a worker may serve several
    ``--bind``), so that handlers share what they keep on their server, as
    under ``socketserver``. ``socket`` is None: the listening socket is the
    parent's. ``server_name`` is the bound host as given, with no DNS
    lookup (``http.server.HTTPServer`` asks ``getfqdn``).
    """

    timeout: Optional[float] = None
    socket: Any = None

    def __init__(self, handler_class: Any, server_address: Any) -> None:
        self.RequestHandlerClass = handler_class
        self.server_address = server_address
        if isinstance(server_address, tuple):
            self.server_name, self.server_port = str(server_address[0]), server_address[1]
        else:
            self.server_name, self.server_port = str(server_address or ""), 0

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return True

    def shutdown_request(self, request: Any) -> None:
        """Nothing: the worker ends the connection after the handler."""

    def close_request(self, request: Any) -> None:
        """Nothing: the worker ends the connection after the handler."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("Error handling connection from %s", client_address)


class Served:
    """What one handler connection did, for the access log."""

    __slots__ = ("address", "received", "sent", "seconds")

    def __init__(
        self, address: Any, received: Optional[int], sent: Optional[int], seconds: float
    ) -> None:
        self.address = address
        self.received = received
        self.sent = sent
        self.seconds = seconds


#: ``server_address`` -> its ``HandlerServer``, for this worker's socketserver target.
_servers: Dict[Any, HandlerServer] = {}


def _server_for(handler_class: Any, sock: Any) -> HandlerServer:
    try:
        address = sock.getsockname()
    except OSError:
        address = ""
    if isinstance(address, list):  # hashable, whatever the family
        address = tuple(address)
    server = _servers.get(address)
    if server is None:
        server = _servers[address] = HandlerServer(handler_class, address)
    return server


def _progress(sock: Any) -> Optional[Tuple[bool, int, int]]:
    """The kernel's byte counts of a TCP connection (None if closed or not TCP)."""
    try:
        if sock.fileno() < 0:
            return None
        return _platform.tcp_progress(sock)
    except OSError:
        return None


def serve_handler(net_socket: Socket, kind: str, target: Callable[..., Any]) -> Served:
    """Run a handler target on a connection, then end the connection gracefully.

    Args:
        net_socket: the connection.
        kind: ``"socketserver"`` (``target(request, client_address,
            server)``) or ``"handler"`` (``target(socket, address)``).
        target: the handler class or callable.

    Returns:
        What the connection did: bytes in and out are the kernel's counts
        (TCP on Linux), None where it does not say or the handler closed
        the socket itself.
    """
    sock = net_socket.socket
    start = time.time()
    address = peer_address(net_socket)
    before = _progress(sock)
    try:
        if kind == "socketserver":
            target(sock, address, _server_for(target, sock))
        else:
            target(sock, address)
    except Exception:
        log.exception("Error handling connection from %s", address or "a Unix socket client")
    finally:
        after = _progress(sock)
        end_gracefully(net_socket)
    received = sent = None
    if before is not None and after is not None:
        received, sent = after[1] - before[1], after[2] - before[2]
    return Served(address, received, sent, time.time() - start)
