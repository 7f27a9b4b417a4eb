"""``net.Server``: a listening TCP server with Node's events, on ``StreamServer``."""

from __future__ import annotations

import errno
import logging
import os
import socket as _stdlib_socket
from typing import Any, Callable, Optional, Sequence, Tuple, TypedDict, Union

from gevent import socket as gsocket
from gevent.server import StreamServer

from ._dispatch import submit
from ._lifetime import FAMILIES, Accepted, HostPort, close_later, host_port
from ._proxied import LOOPBACK, TIMEOUT, ProxyPolicy
from ._stream import Socket
from .errors import InvalidHandleTypeError
from .events import EventEmitter

__all__ = ["Server", "AddressInfo"]

log = logging.getLogger("geventfork.net")

#: ``accept`` errors that mean "not now": out of fds or memory.
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
#: Seconds accepting pauses after such an error.
ACCEPT_PAUSE = 0.1
#: Seconds between two warnings about it.
PAUSE_WARNING_EVERY = 10.0


class AddressInfo(TypedDict):
    """What ``Server.address()`` returns, as Node's ``server.address()``."""

    address: str
    family: Optional[str]  # "IPv4" or "IPv6"
    port: int


def _bind(host: str, port: int, backlog: int, path: Optional[str] = None) -> gsocket.socket:
    """A listening socket; closed again if binding fails (gevent's own leaks it)."""
    if path is not None:
        family = _stdlib_socket.AF_UNIX
    else:
        family = _stdlib_socket.AF_INET6 if ":" in host else _stdlib_socket.AF_INET
    sock = gsocket.socket(family, _stdlib_socket.SOCK_STREAM)
    try:
        if path is None:
            sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_REUSEADDR, 1)
        sock.bind(path if path is not None else (host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


class _Acceptor(StreamServer):
    """A ``StreamServer`` that leaves accepted sockets open: ``Socket`` owns them.

    It hands on the bare accepted fd; ``Socket`` makes a socket object of it
    only if the connection is used here, not just sent on.
    """

    _paused: Any = None  # the timer that resumes accepting, while out of fds
    _warned_at = float("-inf")

    # It gives the handler (Server._accept) an Accepted, where the stubs say a socket.
    def do_read(self) -> Optional[Tuple[Accepted, Any]]:  # type: ignore[override]
        listener = self.socket
        try:
            # The fd alone, as socket.accept() gets it: the stdlib's private
            # method (not ours, and not in the stubs), which gevent's accept calls.
            fd, address = listener._accept()  # type: ignore[attr-defined]  # noqa: SLF001
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno not in OUT_OF_RESOURCES:
                raise
            self._pause(exc)  # clients wait in the backlog meanwhile, as nginx lets them
            return None
        return Accepted(fd, listener.family, listener.type, listener.proto, address), address

    def _pause(self, exc: OSError) -> None:
        """Out of fds (or memory): stop accepting for ``ACCEPT_PAUSE`` s, with one line."""
        if self._paused is not None:
            return
        now = self.loop.now()
        if now - self._warned_at >= PAUSE_WARNING_EVERY:  # one line, not ten a second
            self._warned_at = now
            log.warning(
                "accepting paused for %g s: %s (raise the open-file limit, ulimit -n)",
                ACCEPT_PAUSE,
                exc.strerror or exc,
            )
        self.stop_accepting()
        self._paused = self.loop.timer(ACCEPT_PAUSE)
        self._paused.start(self._resume)

    def _resume(self) -> None:
        self._paused = None
        if not self.closed:
            self.start_accepting()

    def do_close(self, sock: object, *args: object) -> None:
        pass


class Server(EventEmitter):
    """A listening TCP server, like Node's ``net.Server``.

    Events: ``'listening'``, ``'connection'(socket)``, ``'close'``,
    ``'error'``, ``'drop'(info)``. Each ``'connection'`` listener runs in a
    greenlet of its own, so it may block.

    With ``proxy_protocol``, every connection must start with a PROXY
    protocol header (v1 or v2, as HAProxy's ``send-proxy``/``send-proxy-v2``
    write it), which is read before ``'connection'`` and nothing after it:
    the socket's ``remote_address``/``remote_port`` are the client's, here
    and in any process it is sent to. A header is believed only from
    ``proxy_allow``; a connection from elsewhere, a malformed header, or one
    not complete within ``proxy_timeout`` s is closed and logged in one
    line, never emitted. A ``LOCAL`` header (a health check) keeps the
    balancer's address. Not in Node.

    Raises:
        ValueError: a ``proxy_allow`` entry that is not a network, or a
            ``proxy_timeout`` not above 0.
    """

    def __init__(
        self,
        connection_listener: Optional[Callable[[Socket], object]] = None,
        *,
        pause_on_connect: bool = False,
        allow_half_open: bool = False,
        proxy_protocol: bool = False,
        proxy_allow: Sequence[str] = LOOPBACK,
        proxy_timeout: float = TIMEOUT,
    ) -> None:
        super().__init__()
        self.pause_on_connect = pause_on_connect
        self.allow_half_open = allow_half_open
        #: Whose PROXY protocol headers are believed; None without ``proxy_protocol``.
        self.proxy: Optional[ProxyPolicy] = (
            ProxyPolicy(proxy_allow, proxy_timeout) if proxy_protocol else None
        )
        #: None, or the most connections open at once; more are closed at once.
        self.max_connections: Optional[int] = None
        self._acceptor: Optional[_Acceptor] = None
        self._open = 0
        self._handed_off = False
        self._closing = False
        if connection_listener is not None:
            self.on("connection", connection_listener)

    @property
    def connections(self) -> Optional[int]:
        """Open connections this server accepted, or None once one was sent away."""
        return None if self._handed_off else self._open

    @property
    def listening(self) -> bool:
        """Whether the server accepts connections."""
        return self._acceptor is not None and not self._acceptor.closed

    def listen(
        self,
        port: int = 0,
        host: str = "0.0.0.0",
        backlog: int = 511,
        callback: Optional[Callable[[], object]] = None,
        *,
        path: Optional[str] = None,
    ) -> Server:
        """Bind and listen; ``'listening'`` follows.

        Unlike Node, binding happens now, so ``address()`` works at once and
        a bind error (``OSError``) is raised here rather than emitted.

        Args:
            path: listen on this Unix socket instead of a TCP port (Node's
                ``server.listen(path)``); the file is not removed on close.
        """
        if self.listening:
            raise RuntimeError("the server is already listening")
        listener = _bind(host, port, backlog, path)  # a bind error leaves no callback behind
        if callback is not None:
            self.once("listening", callback)
        # The stubs type a StreamServer's handler for a socket; ours gets an
        # Accepted from _Acceptor.do_read (here and in from_handoff).
        self._start(_Acceptor(listener, self._accept, spawn=None))  # type: ignore[arg-type]
        return self

    @classmethod
    def from_handoff(
        cls, sock: gsocket.socket, *, pause_on_connect: bool, allow_half_open: bool
    ) -> Server:
        """Hook: the channel calls this to rebuild a server another process sent.

        Returns:
            A server accepting on ``sock``, the listening socket received.
        """
        server = cls(pause_on_connect=pause_on_connect, allow_half_open=allow_half_open)
        server._start(_Acceptor(sock, server._accept, spawn=None))  # type: ignore[arg-type]
        return server

    def _start(self, acceptor: _Acceptor) -> None:
        self._acceptor = acceptor
        self._closing = False
        acceptor.start()
        submit(self.emit, "listening")

    def handoff_start(self) -> int:
        """Hook: ``send()`` calls this when given the server; return its listening fd.

        The server goes on accepting here too, as in Node.

        Raises:
            InvalidHandleTypeError: the server is not listening.
        """
        if self._acceptor is None or not self.listening:
            raise InvalidHandleTypeError("cannot send a server that is not listening")
        fd: int = self._acceptor.socket.fileno()
        return fd

    # ``AddressInfo | Any`` (typeshed's "Any trick"), not ``Optional``: None only
    # before listen() or after close(), so ``server.address()["port"]`` checks
    # (its key and value types) without a None test, and ``is None`` still does.
    def address(self) -> Union[AddressInfo, Any]:
        """``{"address", "family", "port"}`` of the listening socket, or None;
        a Unix socket's path (a ``str``), as in Node."""
        if self._acceptor is None or not self.listening:
            return None
        sock = self._acceptor.socket
        if sock.family == _stdlib_socket.AF_UNIX:
            name = sock.getsockname()
            return os.fsdecode(name) if isinstance(name, bytes) else name
        # A TCP socket's name (it listens on nothing else): (host, port[, flow, scope]).
        host, port = sock.getsockname()[:2]
        return {"address": host, "family": FAMILIES.get(sock.family), "port": port}

    def close(self, callback: Optional[Callable[[], object]] = None) -> Server:
        """Stop accepting; ``'close'`` follows once every connection has ended."""
        if callback is not None:
            self.once("close", callback)
        if self._acceptor is not None and not self._closing:
            self._closing = True
            self._acceptor.close()
            self._maybe_closed()
        return self

    def serve_forever(self) -> None:
        """Block the calling greenlet until the server is closed."""
        if self._acceptor is None:
            raise RuntimeError("call listen() first")
        self._acceptor.serve_forever()

    def _accept(self, sock: Accepted, address: Any) -> None:
        """The accept loop's handler: runs in the hub, so it must not block."""
        if self.proxy is not None:
            self.proxy.read(sock, address, self._accepted)  # then _accepted, or closed
        else:
            self._accepted(sock, None)

    def _accepted(self, sock: Any, peer: Optional[HostPort]) -> None:
        """A connection to emit: ``sock`` an ``Accepted`` or a plain socket;
        ``peer`` the client's address, when a PROXY header said it."""
        if self._closing and not isinstance(sock, Accepted):
            # Its PROXY header was read after close(): no 'connection' after 'close'.
            close_later(sock, True, None)
            return
        if self.max_connections is not None and self._open >= self.max_connections:
            self._drop(sock)
            return
        self._open += 1
        conn = Socket(
            sock,
            server=self,
            paused=self.pause_on_connect,
            allow_half_open=self.allow_half_open,
            peer=peer,
        )
        self.emit("connection", conn)

    def _drop(self, accepted: Any) -> None:
        if isinstance(accepted, Accepted):
            address, sock = accepted.peer, accepted.to_socket()
        else:  # a PROXY header was read from it: a plain socket
            sock = accepted
            try:
                address = sock.getpeername()
            except OSError:
                address = None
        local = host_port(sock.getsockname())
        remote = host_port(address)
        family = FAMILIES.get(sock.family)
        sock.close()
        info = {
            "local_address": local[0],
            "local_port": local[1],
            "local_family": family,
            "remote_address": remote[0],
            "remote_port": remote[1],
            "remote_family": family,
        }
        submit(self.emit, "drop", info)

    def on_connection_closed(self) -> None:
        """Hook: a connection this server accepted calls this once this process is done with it."""
        self._open -= 1
        self._maybe_closed()

    def on_connection_handed_off(self) -> None:
        """Hook: a connection this server accepted calls this as it starts being
        sent to another process; ``connections`` is None from then on."""
        self._handed_off = True

    def _maybe_closed(self) -> None:
        # Node waits for the connections it can still count; sent ones it cannot.
        if self._closing and self._acceptor is not None and (self._open <= 0 or self._handed_off):
            self._acceptor = None
            submit(self.emit, "close")

    def __repr__(self) -> str:
        return f"<net.Server {self.address()} connections={self.connections}>"
