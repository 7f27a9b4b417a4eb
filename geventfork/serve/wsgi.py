"""WSGI on a handed-off connection: ``gevent.pywsgi``, with idle-return.

A worker gets a connection (a ``net.Socket``) with the bytes an earlier
worker had already read of it (``head``). ``Connection.serve()`` answers its
requests with ``gevent.pywsgi``'s ``WSGIHandler``, one at a time, in a
keep-alive loop of our own. Between two requests it waits, without reading,
for the next request's bytes, ``--idle-return`` seconds, or the worker
leaving (retiring or stopping); idle or retiring, the connection goes back
to the parent with the bytes read and not yet served. pywsgi's own loop
(``WSGIHandler.handle``) is not used: once done it reads 16 KiB from the
socket to avoid a reset, which would take the client's next request from a
connection handed back.

Input comes from ``head`` first, then the socket, through a ``BufferedReader``
over ``_Feed``: while "probing", ``_Feed`` answers a socket read with None (no
data yet), so ``rfile.peek(1)`` says whether a request is buffered without a
``recv``.

Beyond pywsgi: ``Connection: close`` is echoed to an HTTP/1.1 client that
asked for it (gunicorn does; pywsgi does not, and such clients count a read
error); a stopping worker answers ``Connection: close``; errors go to the
``geventfork.serve`` log, not the hub's traceback printer; every connection
ends gracefully (FIN at once, never a reset).
"""

from __future__ import annotations

import email.parser
import email.utils
import http.client
import io
import logging
import re
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import gevent
from gevent.hub import Waiter
from gevent.pywsgi import OldMessage, WSGIHandler, WSGIServer

from .handlers import end_gracefully, peer_address

if TYPE_CHECKING:  # pragma: no cover
    from types import TracebackType

    from gevent._types import _IoWatcher, _TimerWatcher
    from typing_extensions import Protocol

    from .._stream import Socket
else:
    Protocol = object

__all__ = ["Connection", "Handler", "Host", "make_server", "READ", "IDLE", "RETIRE", "STOP"]

# Why a wait between requests ends; RETIRE and STOP are also ``Host.leaving``.
READ = "read"  # the next request's bytes arrived (or EOF)
IDLE = "idle"  # nothing came for ``idle_return`` seconds
RETIRE = "retire"  # the worker retires: hand idle connections back
STOP = "stop"  # the worker stops: close idle connections

# What ``Connection._serve`` decided.
_CLOSE = "close"
_HAND_BACK = "hand back"

#: The input buffer's size: pywsgi's own (``makefile('rb', -1)``).
BUFFER_SIZE = io.DEFAULT_BUFFER_SIZE

#: A response's head goes out in one send with its body's first write up to
#: this size (pywsgi sends them apart: with ``TCP_NODELAY`` two segments, and
#: two wake-ups of the client, for every small response).
COALESCE_LIMIT = 64 * 1024

log = logging.getLogger("geventfork.serve")

#: A header line the email parser would take as one whole field: a name of
#: the characters its ``headerRE`` allows (none empty), a colon, a value with
#: no line break inside.
_FIELD = re.compile(r"[\x21-\x39\x3b-\x7e]+:[^\r\n]*(?:\r?\n)?\Z")


#: http.client's header reader (3.9 to 3.13; private): its line and count limits.
_read_headers: Optional[Callable[[Any], List[bytes]]] = getattr(http.client, "_read_headers", None)


def parse_headers(rfile: Any, *args: Any) -> OldMessage:
    """pywsgi's ``headers_factory``, the same message, without the email
    parser when every line is a plain ``Name: value``.

    The email parser takes more time than the rest of a small request's
    parsing; a line it could read otherwise (a continuation, a bare CR, no
    colon ...) sends the whole block to it, as pywsgi does.
    """
    try:
        if _read_headers is None:  # a Python whose http.client differs
            message: OldMessage = http.client.parse_headers(rfile, _class=OldMessage)
            return message
        lines = _read_headers(rfile)
    except http.client.LineTooLong:
        message = OldMessage()
        message.status = "Line too long"
        return message
    fields = [line.decode("iso-8859-1") for line in lines[:-1]]  # the last ends them
    if not all(map(_FIELD.match, fields)):
        text = b"".join(lines).decode("iso-8859-1")
        message = email.parser.Parser(_class=OldMessage).parsestr(text)
        return message
    message = OldMessage()
    for line in fields:
        name, _, value = line.partition(":")
        # As the email parser (compat32's header_source_parse) stores it.
        message.set_raw(name, value.lstrip(" \t").rstrip("\r\n"))
    return message


class _Date:
    """The ``Date`` header's value, formatted once a second (pywsgi formats
    it for every response)."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.second = second
            cls.value = email.utils.formatdate(second, usegmt=True).encode("latin-1")
        return cls.value


class Host(Protocol):
    """What a ``Connection`` needs of the worker that serves it (``worker.Worker``)."""

    #: Seconds a connection may be idle between requests before it is handed
    #: back (0: never).
    idle_return: float
    #: None while serving; ``RETIRE`` or ``STOP`` once the worker leaves.
    leaving: Optional[str]

    def waiting(self, connection: Connection, idle: bool) -> None:
        """``connection`` starts (``idle``) or stops waiting between requests."""

    def requested(self, handler: Handler) -> None:
        """``handler`` answered one request (or refused a bad one)."""

    def hand_back(self, net_socket: Socket, head: bytes) -> None:
        """Send the connection to the parent with ``head``, the bytes not yet served."""

    def closed(self, net_socket: Socket) -> None:
        """The connection was ended: the worker is done with it."""


def make_server(application: Any, logger: logging.Logger) -> WSGIServer:
    """The ``WSGIServer`` every connection of this worker shares; it never listens.

    It holds the application and the base environ; ``wsgi.errors`` is
    ``logger`` at error level, and pywsgi's own access log is off (the
    worker writes its own).
    """
    # Never started: the address is only a placeholder (None is refused).
    return WSGIServer(
        ("127.0.0.1", 0),
        application,
        log=None,
        error_log=logger,
        environ={"wsgi.multiprocess": True},
    )


class _Feed(io.RawIOBase):
    """Raw input of a connection: ``head`` first, then the socket.

    While ``probing``, a read that would need the socket answers None (no
    data available), so a ``BufferedReader`` over it can be asked what it
    holds without a ``recv``.
    """

    def __init__(self, sock: Any, head: bytes) -> None:
        super().__init__()
        self._sock = sock
        self._head = memoryview(head)
        self.probing = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> Optional[int]:
        if self._head:
            size = min(len(buffer), len(self._head))
            buffer[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        if self.probing:
            return None
        received: int = self._sock.recv_into(buffer)
        return received

    def leftover(self) -> bytes:
        """``head``'s bytes not read yet."""
        return bytes(self._head)


class Handler(WSGIHandler):
    """pywsgi's handler for one connection's requests, called by ``Connection``.

    Args:
        sock: the connection's gevent socket.
        address: the client's address (``getpeername``).
        server: the worker's ``WSGIServer`` (``make_server``).
        rfile: the connection's input.
        connection: the ``Connection`` it serves.
    """

    #: Body bytes of the current response (the access log's length).
    body_length = 0
    #: The response's status line and headers, held back by ``_sendall`` to
    #: go out with the body's first bytes.
    _head: Optional[bytearray] = None
    _holding = False

    def __init__(
        self, sock: Any, address: Any, server: WSGIServer, rfile: Any, connection: Connection
    ) -> None:
        # Not WSGIHandler.__init__: it would make an rfile of its own
        # (``sock.makefile``), which reads ahead of ``head``.
        self.socket = sock
        self.client_address = address
        self.server = server
        self.rfile = rfile
        self.connection = connection

    def MessageClass(self, *args: Any) -> OldMessage:  # noqa: N802  # pywsgi's name
        return parse_headers(*args)

    def get_environ(self) -> Dict[str, Any]:
        environ: Dict[str, Any] = super().get_environ()
        environ.update(self.connection.server_vars)
        return environ

    def handle_one_response(self) -> None:
        # pywsgi leaves these from the previous request until start_response.
        self.code = None
        self.body_length = 0
        self._head = None
        self._holding = False
        super().handle_one_response()

    def finalize_headers(self) -> None:
        if self.provided_date is None:
            # pywsgi's, from the cache: it would format it for this response.
            headers: List[Tuple[bytes, bytes]] = self.response_headers  # type: ignore[assignment]
            headers.append((b"Date", _Date.now()))
            self.provided_date = "cached"
        super().finalize_headers()

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        """pywsgi's, plus ``Connection: close`` when the client asked for it,
        or the worker stops (pywsgi sends it to HTTP/1.0 clients only)."""
        if self.connection.host.leaving == STOP:
            self.close_connection = True
        write = super().start_response(status, headers, exc_info)
        if self.close_connection and self.request_version == "HTTP/1.1":
            # pywsgi keeps them as bytes (its stubs say str).
            headers_sent: List[Tuple[bytes, bytes]] = self.response_headers  # type: ignore[assignment]
            if all(name.lower() != b"connection" for name, _value in headers_sent):
                headers_sent.append((b"Connection", b"close"))
        return write

    def _write_with_headers(self, data: bytes) -> None:
        # pywsgi's (gevent 24.2 to 26) sends the head, then calls _write(data):
        # _sendall holds the head back to send both at once.
        self._holding = True
        try:
            super()._write_with_headers(data)  # type: ignore[misc]
        finally:
            self._holding = False
            head, self._head = self._head, None
        if head is not None:  # no body bytes came (an empty body)
            self._sendall(head)

    def _sendall(self, data: Any) -> None:
        """pywsgi's: the head is held here, and sent with the body's first bytes."""
        if self._holding and self._head is None:
            self._head = data  # pywsgi's bytearray, ours from here on
            return
        head = self._head
        if head is not None:
            self._head = None
            if len(data) > COALESCE_LIMIT:
                self._send(head)
            else:
                head += data
                data = head
        self._send(data)

    def _send(self, data: Any) -> None:
        """pywsgi's ``_sendall``, but ``send`` first: gevent's ``sendall`` asks
        the kernel for ``SO_SNDBUF`` on every call."""
        try:
            sent = self.socket.send(data)
            if sent < len(data):
                self.socket.sendall(memoryview(data)[sent:])
        except OSError as exc:
            self.status = f"socket error: {exc}"
            if self.code is not None and self.code > 0:
                self.code = -self.code
            raise
        self.response_length += len(data)

    def _write(self, data: bytes, *args: Any) -> None:
        # pywsgi's (gevent 24.2 to 26): every body byte passes here, headers do not.
        self.body_length += len(data)
        super()._write(data, *args)  # type: ignore[misc]

    def log_error(self, msg: str, *args: object) -> None:
        """pywsgi reports a client's bad request here: the client's fault, so
        a debug line, as gunicorn logs it (pywsgi writes it to its error log)."""
        log.debug("Invalid request: %s", msg % args if args else msg)

    def log_request(self) -> None:
        self.connection.host.requested(self)

    def _log_error(
        self,
        kind: type[BaseException],
        value: BaseException,
        tb: Optional[TracebackType],
    ) -> None:
        # pywsgi's (gevent 24.2 to 26) prints through the hub; we log it as
        # gunicorn does. The client then gets a 500, or the connection closes.
        if not isinstance(value, gevent.GreenletExit):
            log.error("Error handling request %s", self.requestline, exc_info=(kind, value, tb))


def _server_vars(sock: Any) -> Dict[str, str]:
    """``SERVER_NAME`` and ``SERVER_PORT`` for the address the client connected to.

    pywsgi takes them from its listening socket, which this server does not have.
    """
    try:
        address = sock.getsockname()
    except OSError:
        address = ""
    if isinstance(address, tuple):
        return {"SERVER_NAME": str(address[0]), "SERVER_PORT": str(address[1])}
    if isinstance(address, bytes):  # a Unix socket in the abstract namespace
        address = address.decode("latin-1")
    return {"SERVER_NAME": address or "", "SERVER_PORT": ""}


class Connection:
    """One connection this worker was given, until it is closed or handed back.

    Args:
        server: the worker's ``WSGIServer`` (``make_server``).
        host: the worker.
        net_socket: the connection.
        head: bytes an earlier worker read from it, served first.
    """

    def __init__(self, server: WSGIServer, host: Host, net_socket: Socket, head: bytes) -> None:
        self.host = host
        self.net_socket = net_socket
        sock = net_socket.socket
        self._feed = _Feed(sock, head)
        self._rfile = io.BufferedReader(self._feed, BUFFER_SIZE)
        address = peer_address(net_socket)
        self.server_vars = _server_vars(sock)
        self.handler = Handler(sock, address, server, self._rfile, self)
        self._waiter: Optional[Waiter[str]] = None
        self._watchers: Optional[Tuple[_IoWatcher, Optional[_TimerWatcher]]] = None

    def serve(self) -> None:
        """Answer requests until the connection closes or goes back to the parent.

        Never raises for the client's or the application's doing; the
        connection is ended gracefully in every case but a hand-back.
        """
        outcome = _CLOSE
        try:
            outcome = self._serve()
        except OSError as exc:  # the client went away
            log.debug("connection from %s: %s", self.handler.client_address, exc)
        except Exception:
            log.exception("Error handling connection from %s", self.handler.client_address)
        finally:
            self._close_watchers()
            if outcome == _HAND_BACK:
                self.host.hand_back(self.net_socket, self._unserved())
            else:
                end_gracefully(self.net_socket)
                self.host.closed(self.net_socket)
            # The handler and this connection refer to each other: without
            # this, what they hold (request, buffers, socket) would wait for
            # the garbage collector, a few dozen objects per connection.
            self.handler.connection = None  # type: ignore[assignment]

    def _serve(self) -> str:
        handler = self.handler
        while True:
            handler.time_start = time.time()
            handler.time_finish = 0
            result = handler.handle_one_request()
            if result is None:  # EOF, Connection: close, HTTP/1.0, an error
                return _CLOSE
            if result is not True:  # pywsgi refused the request (400, 414)
                self._refuse(result)
                return _CLOSE
            leaving = self.host.leaving
            if leaving is not None:
                return _HAND_BACK if leaving == RETIRE else _CLOSE
            reason = READ if self._buffered() else self._wait()
            if reason != READ:
                return _CLOSE if reason == STOP else _HAND_BACK

    def _refuse(self, result: Tuple[str, bytes]) -> None:
        """Send pywsgi's error response (it says ``Connection: close``), and log it."""
        status, body = result
        handler = self.handler
        handler.code = int(status)
        handler.body_length = 0
        try:
            handler.socket.sendall(body)
        except OSError:
            pass
        handler.time_finish = time.time()
        self.host.requested(handler)

    def _buffered(self) -> bool:
        """Whether the next request's first bytes are here already (no ``recv``)."""
        self._feed.probing = True
        try:
            return bool(self._rfile.peek(1))
        finally:
            self._feed.probing = False

    def _unserved(self) -> bytes:
        """The bytes read and not served yet: what goes back with the connection."""
        self._feed.probing = True
        try:
            buffered = self._rfile.peek(1)  # all the buffer holds; no recv
        finally:
            self._feed.probing = False
        return bytes(buffered) + self._feed.leftover()

    def _wait(self) -> str:
        """Wait for the next request's bytes, ``idle_return``, or ``wake()``.

        Loop watchers rather than a read: nothing is taken from the socket,
        so the connection can go back with every byte of the next request.
        """
        if self._watchers is None:
            loop = gevent.get_hub().loop
            idle = self.host.idle_return
            # A repeating timer, restarted by again(): start() after stop()
            # would resume libev's countdown where it stopped.
            timer = loop.timer(idle, idle) if idle > 0 else None
            self._watchers = (loop.io(self.handler.socket.fileno(), 1), timer)
        readable, timer = self._watchers
        waiter: Waiter[str] = Waiter()
        self._waiter = waiter
        readable.start(self._wake_now, READ)
        if timer is not None:
            # update: the loop's clock may be as old as the request just served.
            timer.again(self._wake_now, IDLE, update=True)
        self.host.waiting(self, True)
        try:
            reason: str = waiter.get()
            return reason
        finally:
            self._waiter = None
            readable.stop()
            if timer is not None:
                timer.stop()
            self.host.waiting(self, False)

    def wake(self, reason: str) -> None:
        """End a wait between requests with ``reason`` (``RETIRE``, ``STOP``); any greenlet."""
        if self._waiter is not None:
            gevent.get_hub().loop.run_callback(self._wake_now, reason)

    def _wake_now(self, reason: str) -> None:
        # In the hub (a watcher's or run_callback's): once per wait, whoever is first.
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.switch(reason)

    def _close_watchers(self) -> None:
        # Before the fd is handed back or closed.
        if self._watchers is not None:
            for watcher in self._watchers:
                if watcher is not None:
                    watcher.stop()
                    watcher.close()
            self._watchers = None
