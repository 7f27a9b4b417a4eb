"""``net.Socket``: a connected stream with Node's events, on a gevent socket."""

from __future__ import annotations

import codecs
import logging
import socket as _stdlib_socket
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, List, Optional, Tuple, Union

import gevent
from gevent import socket as gsocket

from . import _platform
from ._dispatch import submit
from ._lifetime import (
    DONTWAIT,
    END_LINGER,
    FAMILIES,
    READ_SIZE,
    Accepted,
    HostPort,
    Lifetime,
    ServerHooks,
    close_later,
    discard_unread,
    gevent_socket,
    host_port,
    interrupt_later,
    report_done,
)
from .errors import InvalidHandleTypeError
from .events import EventEmitter

if TYPE_CHECKING:  # pragma: no cover
    import _socket

    from gevent._types import _IoWatcher, _TimerWatcher

__all__ = ["Accepted", "Socket", "END_LINGER", "READ_SIZE", "HIGH_WATER_MARK"]

log = logging.getLogger("geventfork.net")

#: ``write()`` returns False once this many bytes wait to be written (Node's
#: default ``highWaterMark`` for streams is 16 KiB).
HIGH_WATER_MARK = 16 * 1024

#: Whether ``tcp_progress()`` gave figures in this process (see ``tcp_baseline``).
_tcp_progress_seen = False

#: A completion callback: ``callback(None)`` or ``callback(err)``.
WriteCallback = Callable[[Optional[BaseException]], object]


def _raw(sock: Any) -> Any:
    """The non-blocking socket under a gevent socket, for calls that must not wait."""
    return getattr(sock, "_sock", sock)


class Socket(EventEmitter):
    """A connected stream, like Node's ``net.Socket``.

    Use events (``'data'``, ``'end'``, ``'close'``) or ``socket`` (the gevent
    socket: ``recv``, ``sendall``, ``makefile``), one style or the other.
    Reading starts when a ``'data'`` listener is added or ``resume()`` is
    called, unless the socket is paused.

    Unlike Node, an ``'error'`` with no listener is logged and the socket
    destroyed instead of raised, so one misbehaving client never takes a
    worker down.
    """

    def __init__(
        self,
        sock: Any,
        *,
        server: Optional[ServerHooks] = None,
        paused: bool = False,
        allow_half_open: bool = False,
        on_done: Optional[Callable[[], object]] = None,
        peer: Optional[HostPort] = None,
    ) -> None:
        """Wrap a connected socket.

        Args:
            sock: a gevent socket; or a plain ``_socket.socket`` or an
                ``Accepted``, which the ``Socket`` then owns.
            server: the ``Server`` that accepted it; it counts the
                connection until this process is done with it.
            paused: whether reading waits for ``resume()``.
            allow_half_open: whether the peer's EOF leaves our side open.
            on_done: called once, with no arguments, when this process is
                done with the connection: destroyed (``end()`` included),
                sent on and acknowledged, its ``socket`` closed or detached,
                or collected unclosed. Never in the middle of the garbage
                collector: then on the hub's next turn. It must not block;
                what it raises is logged.
            peer: the remote ``(host, port)``, when known already (a
                hand-off carries it); else the kernel is asked when needed.

        Raises:
            TypeError: ``on_done`` is not callable.
        """
        super().__init__()
        # A gevent socket; or, until ``socket`` is first asked for, a plain
        # ``_socket.socket`` (received) or an ``Accepted`` fd: a connection
        # that is only handed on never needs the gevent one.
        self._sock = sock
        #: The ``Server`` that accepted this socket, if any.
        self.server = server
        self.allow_half_open = allow_half_open
        self._paused = paused
        if on_done is not None and not callable(on_done):
            raise TypeError(f"on_done must be callable, not {type(on_done).__name__}")
        if on_done is not None:
            self._on_done = on_done
        if peer is not None:
            self._peer = peer

    # Per-socket state starts as these class-wide defaults: a hand-off makes
    # a Socket on each side, and most of its state is never touched.
    _sock: Any = None
    bytes_read = 0
    bytes_written = 0
    destroyed = False
    _reader: Optional[gevent.Greenlet[[], None]] = None
    _writer: Optional[gevent.Greenlet[[], None]] = None
    # A deque of [data, callback] once a write had to wait.
    _pending: Union[Tuple[()], Deque[List[Any]]] = ()
    _pending_bytes = 0
    _need_drain = False
    _ending = False
    _write_shut = False
    _read_eof = False
    _decoder: Optional[codecs.IncrementalDecoder] = None  # after set_encoding()
    _timeout: Optional[_TimerWatcher] = None
    _idle = False
    _peer: Optional[HostPort] = None  # once known
    _lingering: Optional[Tuple[_IoWatcher, _TimerWatcher]] = None  # while end() drains
    _on_done: Optional[Callable[[], object]] = None
    _done: Optional[Lifetime] = None  # once ``socket`` was handed out, or collected
    _finished = False  # counted out and on_done called, without a Lifetime
    _in_flight = False  # handed to a channel, not yet acknowledged or returned
    _sent = False  # acknowledged with keep_open: another process has it too

    @property
    def socket(self) -> Any:
        """The underlying gevent socket (``recv``, ``sendall``, ``makefile``).

        Closing it (or detaching it) ends this process's part in the
        connection, as ``destroy()`` does, without ``'close'``.
        """
        if not isinstance(self._sock, gsocket.socket):
            self._sock = gevent_socket(self._raw_socket, self._lifetime())
        return self._sock

    def _lifetime(self) -> Lifetime:
        """The ``Lifetime`` this socket shares with its gevent socket, made on first need.

        Not before: a connection that is only handed on never needs one.
        """
        if self._done is None:
            if self._finished:
                self._done = Lifetime(None, None, self._sent)
            else:
                self._done = Lifetime(self.server, self._on_done, self._sent)
        return self._done

    def _finish(self) -> None:
        """This process is done with the connection: count it out, call ``on_done`` (once)."""
        if self._done is not None:
            self._done()
        elif not self._finished:
            self._finished = True
            report_done(self.server, self._on_done)

    @property
    def _raw_socket(self) -> Any:
        """The plain socket under this one; calls that must not wait pass ``MSG_DONTWAIT``."""
        if isinstance(self._sock, Accepted):
            if self._peer is None:
                self._peer = host_port(self._sock.peer)  # accept told us: keep it
            self._sock = self._sock.to_socket()
        return _raw(self._sock)

    # -- addresses --------------------------------------------------------

    @property
    def remote_address(self) -> Optional[str]:
        """The peer's IP address (or None)."""
        return self._peername()[0]

    @property
    def remote_port(self) -> Optional[int]:
        """The peer's port (or None)."""
        return self._peername()[1]

    @property
    def remote_family(self) -> Optional[str]:
        """``"IPv4"`` or ``"IPv6"`` (or None for other families)."""
        return FAMILIES.get(self._sock.family)

    @property
    def local_address(self) -> Optional[str]:
        """Our IP address (or None)."""
        return self._sockname()[0]

    @property
    def local_port(self) -> Optional[int]:
        """Our port (or None)."""
        return self._sockname()[1]

    def _peername(self) -> HostPort:
        """(host, port) of the peer, remembered once known.

        An accepted socket knows it from ``accept``; a received one asks the
        kernel the first time, which fails once the peer has reset the
        connection: so it is asked as soon as the socket is used here.
        """
        if self._peer is None:
            try:
                self._peer = host_port(self._sock.getpeername())
            except OSError:
                return (None, None)
        return self._peer

    def _peer_label(self) -> str:
        """``host:port`` (``[host]:port`` for IPv6), or ``unknown peer``."""
        host, port = self._peername()
        if host is None:
            return "unknown peer"
        if port is None:
            return str(host)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _sockname(self) -> HostPort:
        try:
            return host_port(self._raw_socket.getsockname())
        except OSError:
            return (None, None)

    # -- reading ----------------------------------------------------------

    def pause(self) -> Socket:
        """Stop reading (after any ``recv`` already under way)."""
        self._paused = True
        return self

    def resume(self) -> Socket:
        """Start (or go on) reading, emitting ``'data'`` and then ``'end'``."""
        self._paused = False
        self._start_reading()
        return self

    @property
    def is_paused(self) -> bool:
        """Whether reading is paused."""
        return self._paused

    def set_encoding(self, encoding: Optional[str] = "utf-8") -> Socket:
        """Emit ``'data'`` as ``str`` decoded with ``encoding`` (None: bytes).

        Like Node's (a ``StringDecoder``), a character split between two
        reads is emitted whole, and invalid bytes become U+FFFD.
        """
        self._decoder = codecs.getincrementaldecoder(encoding)("replace") if encoding else None
        return self

    def _listeners_changed(self, event: str) -> None:
        if event == "data" and self.listener_count("data") and not self._paused:
            self._start_reading()

    def _start_reading(self) -> None:
        if self._reader is None and not self.destroyed and not self._read_eof:
            self._peername()  # while the kernel still knows it (see _peername)
            self._reader = gevent.spawn(self._read_loop)

    def _read_loop(self) -> None:
        try:
            while not self._paused and not self.destroyed:
                data = self.socket.recv(READ_SIZE)
                if not data:
                    self._on_eof()
                    return
                self.bytes_read += len(data)
                self._idle = False
                if self._decoder is not None:
                    data = self._decoder.decode(data)
                    if not data:
                        continue  # only the start of a character so far
                self.emit("data", data)
        except OSError as exc:
            self._destroy_on(exc)
        finally:
            if self._reader is gevent.getcurrent():
                self._reader = None

    def _on_eof(self) -> None:
        self._read_eof = True
        self.emit("end")
        if self._write_shut:
            self.destroy()
        elif not self.allow_half_open:
            self.end()

    # -- writing ----------------------------------------------------------

    def write(
        self, data: Union[bytes, str, memoryview], callback: Optional[WriteCallback] = None
    ) -> bool:
        """Write ``data`` (``str`` is UTF-8 encoded) without blocking the caller.

        Returns:
            False once more than ``HIGH_WATER_MARK`` bytes wait to be written;
            ``'drain'`` follows when they have been.
        """
        if isinstance(data, str):
            data = data.encode("utf-8")
        if self.destroyed or self._ending:
            err = BrokenPipeError("write after end" if self._ending else "socket is destroyed")
            submit(self._write_failed, err, callback)
            return False
        if not self._pending:
            try:
                sent = self._raw_socket.send(data, DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                submit(self._write_failed, exc, callback)
                return False
            self.bytes_written += sent
            self._idle = False
            if sent == len(data):
                if callback is not None:
                    submit(callback, None)
                return True
            data = memoryview(data)[sent:]
        if not self._pending:
            self._pending = deque()
        self._pending.append([data, callback])
        self._pending_bytes += len(data)
        if self._writer is None:
            self._peername()  # while the kernel still knows it (see _peername)
            self._writer = gevent.spawn(self._write_loop)
        if self._pending_bytes < HIGH_WATER_MARK:
            return True
        self._need_drain = True
        return False

    def _write_loop(self) -> None:
        try:
            while self._pending:
                data, callback = self._pending[0]
                self.socket.sendall(data)
                self._pending.popleft()
                self._pending_bytes -= len(data)
                self.bytes_written += len(data)
                self._idle = False
                if callback is not None:
                    callback(None)
            if self._need_drain:
                self._need_drain = False
                self.emit("drain")
        except OSError as exc:
            self._destroy_on(exc)
            return
        finally:
            self._writer = None
        if self._ending:
            self._shut_write()

    def _write_failed(self, err: BaseException, callback: Optional[WriteCallback]) -> None:
        if callback is not None:
            callback(err)
        self._destroy_on(err)

    def end(
        self, data: Union[bytes, str, None] = None, callback: Optional[Callable[..., object]] = None
    ) -> Socket:
        """Write ``data``, then close gracefully.

        Remaining writes are flushed, the write side is shut down, and the
        socket is closed once the peer has closed, or after ``END_LINGER``
        seconds; bytes the peer sent meanwhile are read and dropped, so a
        client whose request was never read sees no reset.
        """
        if callback is not None:
            self.once("finish", callback)
        if self._ending or self.destroyed:
            return self
        if data is not None:
            self.write(data)
        self._ending = True
        if self._writer is None:
            self._shut_write()
        return self

    def _shut_write(self) -> None:
        if self._write_shut or self.destroyed:
            return
        self._write_shut = True
        try:
            self._raw_socket.shutdown(_stdlib_socket.SHUT_WR)
        except OSError:
            pass
        self.emit("finish")
        if self._read_eof:
            self.destroy()
        elif self._reader is None:
            self._linger()

    def _linger(self) -> None:
        """Drain the peer's bytes until it closes, then close (see ``end``).

        Driven by loop watchers rather than a greenlet: every connection
        served ends here, and a greenlet costs more than the rest of it.
        """
        self._paused = True
        loop = gevent.get_hub().loop
        raw = self._raw_socket
        if raw.fileno() < 0:  # its ``socket`` was closed: nothing to drain
            self._lingered()
            return
        self._lingering = (loop.io(raw.fileno(), 1), loop.timer(END_LINGER))
        self._lingering[1].start(self._lingered)
        self._lingering[0].start(self._discard_unread, raw)

    def _discard_unread(self, raw: _socket.socket) -> None:
        """The socket is readable while lingering (runs in the hub)."""
        if discard_unread(raw):
            self._lingered()

    def _lingered(self) -> None:
        self._stop_lingering()
        if self._listeners.get("close"):
            submit(self.destroy)  # 'close' listeners may block: not in the hub
        else:
            self.destroy()

    def _stop_lingering(self) -> None:
        if self._lingering is not None:
            for watcher in self._lingering:
                watcher.stop()
                watcher.close()
            self._lingering = None
            if not isinstance(self._sock, gsocket.socket):  # a gevent one does it on close
                fd = self._sock.fileno()
                if fd >= 0:
                    _platform.forget_fd(fd)  # it may be shared: see there

    # -- closing ----------------------------------------------------------

    def destroy(self, error: Optional[BaseException] = None) -> None:
        """Close at once; ``'close'(had_error)`` follows.

        A socket being sent (not yet acknowledged) keeps its fd until the
        hand-off is settled: the channel still has to send it.
        """
        if self.destroyed:
            return
        self.destroyed = True
        self._stop_timer()
        self._stop_lingering()
        for greenlet in (self._reader, self._writer):
            if greenlet is not None and greenlet is not gevent.getcurrent():
                greenlet.kill(block=False)
        if not self._in_flight:
            self._close()
        if error is not None:
            self.emit("error", error)
        self.emit("close", error is not None)

    def _close(self) -> None:
        """Close our fd; this process is done with the connection."""
        self._sock.close()
        self._finish()

    def __del__(self) -> None:
        """Collected while still open: close the connection, gracefully.

        Once ``socket`` was handed out, that gevent socket does this when it
        is collected (or closed) itself.
        """
        try:
            self._collected()
        except KeyboardInterrupt:  # a Ctrl-C must not be lost here
            interrupt_later()

    def _collected(self) -> None:
        sock = self._sock
        if sock is None or self.destroyed or isinstance(sock, gsocket.socket):
            return
        if isinstance(sock, Accepted):
            if sock.fd < 0:
                return
            sock = sock.to_socket()
        elif sock.fileno() < 0:
            return
        close_later(sock, not self._sent, self._lifetime())

    def on_abandoned(self) -> None:
        """Hook: ``EventEmitter.on_listener_failed`` calls this when a listener
        this socket was given raised: end it if it is still ours.

        Not if it was destroyed, or sent (in flight, or acknowledged with
        ``keep_open``: another process has the connection).
        """
        if self.destroyed or self._in_flight or self._sent:
            return
        if self._raw_socket.fileno() < 0:  # its ``socket`` was closed already
            self.destroy()
        else:
            self.end()

    def _destroy_on(self, exc: BaseException) -> None:
        if not self.destroyed:
            self._peername()  # a last chance, for the report
            self.destroy(exc)

    def _unhandled_error(self, err: object) -> None:
        log.warning("socket error with no 'error' listener (%s): %r", self._peer_label(), err)
        if not self.destroyed:  # emitted by hand, not by destroy(err)
            self.destroy()

    # -- options ----------------------------------------------------------

    def set_timeout(
        self, seconds: float, callback: Optional[Callable[..., object]] = None
    ) -> Socket:
        """Emit ``'timeout'`` after ``seconds`` idle (0 disables); it does not close."""
        self._stop_timer()
        if callback is not None:
            self.once("timeout", callback)
        if seconds and not self.destroyed:
            self._idle = True
            self._timeout = gevent.get_hub().loop.timer(seconds, seconds, ref=False)
            self._timeout.start(self._on_timer)
        return self

    def _on_timer(self) -> None:
        if self._idle:
            submit(self.emit, "timeout")
        self._idle = True

    def _stop_timer(self) -> None:
        if self._timeout is not None:
            self._timeout.stop()
            self._timeout.close()
            self._timeout = None

    def set_no_delay(self, flag: bool = True) -> Socket:
        """Disable (or re-enable) Nagle's algorithm on a TCP socket."""
        if self._sock.family in FAMILIES:
            self._raw_socket.setsockopt(
                _stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_NODELAY, int(flag)
            )
        return self

    def set_keep_alive(self, flag: bool = True, initial_delay: float = 0) -> Socket:
        """Turn TCP keep-alive on or off; ``initial_delay`` in seconds."""
        self._raw_socket.setsockopt(
            _stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_KEEPALIVE, int(flag)
        )
        idle = getattr(_stdlib_socket, "TCP_KEEPIDLE", None)
        if flag and initial_delay and idle is not None:
            self._raw_socket.setsockopt(
                _stdlib_socket.IPPROTO_TCP, idle, max(1, int(initial_delay))
            )
        return self

    def tcp_progress(self) -> Optional[Tuple[bool, int, int]]:
        """The kernel's account of this TCP connection: ``(shut, consumed, written)``.

        Called by ``Pool`` to tell whether a worker began on a connection;
        None where the kernel does not say (see ``_platform.tcp_progress``).
        """
        return _platform.tcp_progress(self._raw_socket)

    def tcp_baseline(self) -> Optional[Tuple[bool, int, int]]:
        """``tcp_progress()`` as ``Pool`` takes it before a first send.

        A TCP connection as ``accept`` gave it, never made into a socket
        object here, has had nothing read or written by anyone: that is
        ``(False, 0, 0)``, the kernel's own figures for it (a FIN or bytes
        arrived unread change none), known without the four system calls,
        once this kernel was seen to give them at all.
        """
        global _tcp_progress_seen
        sock = self._sock
        if _tcp_progress_seen and isinstance(sock, Accepted) and sock.family in FAMILIES:
            return (False, 0, 0)
        progress = self.tcp_progress()
        if progress is not None:
            _tcp_progress_seen = True
        return progress

    # -- sending to another process ----------------------------------------

    def handoff_peer(self) -> Optional[HostPort]:
        """Hook: the remote ``(host, port)`` if known without asking the kernel,
        for ``send()`` to carry along with the socket; else None."""
        if self._peer is None and isinstance(self._sock, Accepted):
            return host_port(self._sock.peer)
        return self._peer

    def handoff_start(self) -> Tuple[int, int, int]:
        """Hook: ``send()`` calls this when given the socket; stop using it here.

        The socket is in flight until ``on_handoff_released`` or
        ``on_handoff_returned``.

        Returns:
            ``(fd, family, type)`` of the socket, for the frame.

        Raises:
            InvalidHandleTypeError: destroyed, or its ``socket`` closed.
            ValueError: already in flight (sent, not yet acknowledged).
        """
        if self.destroyed:
            raise InvalidHandleTypeError("cannot send a destroyed socket")
        if self._in_flight:
            raise ValueError(
                "this net.Socket is already being sent (not yet acknowledged); "
                "wait for the first send's callback"
            )
        fd: int = self._sock.fileno()
        if fd < 0:
            raise InvalidHandleTypeError("cannot send a closed socket")
        if self._reader is not None:
            self._reader.kill()
            self._reader = None
        self._stop_timer()
        self._in_flight = True
        if self.server is not None:
            self.server.on_connection_handed_off()
        return fd, self._sock.family, self._sock.type

    def on_handoff_released(self, keep_open: bool) -> None:
        """Hook: the channel calls this when the receiver acknowledged the socket.

        Our copy is closed (without a FIN) unless ``keep_open``.
        """
        self._in_flight = False
        if keep_open and not self.destroyed:
            self._sent = True
            if self._done is not None:
                self._done.shared = True
            return
        self.destroyed = True
        self._close()

    def on_handoff_returned(self) -> None:
        """Hook: the channel calls this when the hand-off failed (NACK, channel
        closed, send error), the pool when the process it was shared with
        (``keep_open``) died: the socket is ours alone again.

        Its paused state is kept and its reader not restarted, so it can be
        sent again with every unread byte still in the kernel. Destroyed
        while in flight, it is closed now.
        """
        self._in_flight = False
        if self._sent:
            self._sent = False
            if self._done is not None:
                self._done.shared = False
        if self.destroyed:
            self._close()

    def __repr__(self) -> str:
        state = "destroyed" if self.destroyed else "paused" if self._paused else "open"
        return f"<net.Socket {state} remote={self.remote_address}:{self.remote_port}>"
