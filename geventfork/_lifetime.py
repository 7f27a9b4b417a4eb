"""The life of a connection's fd: who closes it, how, and who is told.

A connection lives in one of three objects in turn: the bare fd ``accept``
returned (``Accepted``), a plain socket, or the gevent socket a
``net.Socket`` hands out (``ConnectionSocket``). Whichever finishes it
(``destroy()``, a close of the gevent socket or of the plain one under it,
the garbage collector) runs its ``Lifetime`` once: the connection is
counted out of its server and ``on_done`` is called. What the collector
finds unclosed is closed gracefully, by loop watchers that hold no
``net.Socket``.
"""

from __future__ import annotations

import _socket
import ipaddress
import logging
import socket as _stdlib_socket
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Protocol, Tuple, Union

import gevent
from gevent import socket as gsocket

from . import _platform

__all__ = [
    "IPAddress",
    "parse_ip",
    "Accepted",
    "ConnectionSocket",
    "Lifetime",
    "ServerHooks",
    "END_LINGER",
    "READ_SIZE",
    "DONTWAIT",
    "FAMILIES",
    "HostPort",
    "close_later",
    "discard_unread",
    "gevent_socket",
    "host_port",
    "report_done",
]

log = logging.getLogger("geventfork.net")

#: Seconds ``end()`` waits for the peer to close before closing anyway. Until
#: then, unread bytes from the peer are drained, so that closing never turns
#: into a reset (the kernel answers a close with unread data by RST).
END_LINGER = 2.0
#: Bytes asked of one ``recv``.
READ_SIZE = 64 * 1024

DONTWAIT = int(_stdlib_socket.MSG_DONTWAIT)

#: Node's names of the address families a ``net`` socket or server reports.
FAMILIES: Dict[int, str] = {_stdlib_socket.AF_INET: "IPv4", _stdlib_socket.AF_INET6: "IPv6"}

#: ``(host, port)``; ``(None, None)`` where the kernel does not say.
HostPort = Tuple[Optional[str], Optional[int]]


IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def parse_ip(host: str) -> Optional[IPAddress]:
    """``host`` as an IP address; an IPv4 client of a dual-stack listener
    (``::ffff:10.0.0.1``) as its IPv4 address; None if it is not one."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])  # no IPv6 zone
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def host_port(address: Any) -> HostPort:
    """``(host, port)`` of an address as ``getsockname``/``getpeername`` give it."""
    if isinstance(address, tuple):
        return address[0], address[1]
    return address or None, None


class ServerHooks(Protocol):
    """What a connection tells the server that accepted it (a ``net.Server``).

    A protocol rather than the class, so that neither module imports the other.
    """

    def on_connection_closed(self) -> None:
        """This process is done with a connection the server accepted (once per connection)."""

    def on_connection_handed_off(self) -> None:
        """A connection the server accepted is being sent to another process."""

    # What a user of ``net.Socket.server`` reaches for, so that its type says so.
    @property
    def connections(self) -> Optional[int]: ...

    @property
    def listening(self) -> bool: ...

    def address(self) -> Any: ...

    def close(self, callback: Optional[Callable[[], object]] = None) -> Any: ...


class Lifetime:
    """What happens once, when this process is done with a connection.

    Shared by a ``Socket`` and the gevent socket it hands out as ``socket``,
    so that whichever finishes first (``destroy()``, the gevent socket's
    close, the garbage collector) counts the connection out of its server
    and calls ``on_done``. It refers to neither of them, so holding it keeps
    neither alive.
    """

    __slots__ = ("server", "on_done", "shared")

    def __init__(
        self, server: Optional[ServerHooks], on_done: Optional[Callable[[], object]], shared: bool
    ) -> None:
        self.server = server
        self.on_done = on_done
        #: Sent to another process with ``keep_open``: the connection is
        #: shared, so it is closed here, never shut down.
        self.shared = shared

    def __call__(self) -> None:
        """Run once (later calls do nothing); never raises."""
        server, on_done = self.server, self.on_done
        self.server = self.on_done = None
        report_done(server, on_done)


def report_done(server: Optional[ServerHooks], on_done: Optional[Callable[[], object]]) -> None:
    """Count a connection out of ``server`` and call ``on_done`` (either may be None)."""
    if server is not None:
        try:
            server.on_connection_closed()
        except Exception:
            log.exception("counting a connection out of its server failed")
    if on_done is not None:
        try:
            on_done()
        except Exception:
            log.exception("a net.Socket's on_done callback raised")


# The class gevent makes the plain socket under its own of: subclasses may
# name another (it must derive from this one), on gevent 24 to 26 alike.
# gevent's stubs do not declare that attribute: the checker takes the stdlib
# class it derives from.
if TYPE_CHECKING:  # pragma: no cover
    _PlainSocket = _socket.socket
else:
    # gevent's own class attribute (not ours): the documented way to subclass it.
    _PlainSocket = gsocket.socket._gevent_sock_class  # noqa: SLF001


class _Fd(_PlainSocket):
    """The plain socket under a ``ConnectionSocket``: it reports its close.

    Hooked here rather than only on the gevent socket because code that
    serves a gevent socket may close the plain one under it directly:
    ``gevent.pywsgi`` does, and then never closes the gevent socket itself.
    """

    __slots__ = ("lifetime",)
    #: Run when this fd is closed or detached, then cleared; set by ``gevent_socket``.
    lifetime: Optional[Lifetime]

    def close(self) -> None:
        fd = self.fileno()
        if fd >= 0:
            _platform.forget_fd(fd)  # the connection may be shared: see there
        super().close()
        _finish(self)

    def detach(self) -> int:
        fd: int = super().detach()
        _finish(self)
        return fd


def _finish(raw: object) -> None:
    """Run ``raw``'s ``Lifetime``, once (if ``raw`` is an ``_Fd``: gevent's
    closed-socket proxy raises on any attribute)."""
    if not isinstance(raw, _Fd):
        return
    lifetime = getattr(raw, "lifetime", None)
    if lifetime is not None:
        raw.lifetime = None
        lifetime()


class ConnectionSocket(gsocket.socket):
    """The gevent socket a ``Socket`` hands out: it reports when it is done.

    Closing it (once no ``makefile()`` object holds it, as for any socket),
    detaching it, closing the plain socket under it, or its being collected
    unclosed runs its ``Lifetime`` (kept by that plain socket). Collected
    unclosed, it is closed gracefully, as ``end()`` would.
    """

    __slots__ = ()
    _gevent_sock_class = _Fd

    # ``_sock`` and ``_real_close`` are gevent's, and private: its stubs omit them.
    def _real_close(self, *args: Any) -> None:
        raw = self._sock  # type: ignore[attr-defined]
        super()._real_close(*args)  # type: ignore[misc]
        # gevent may close ``raw`` itself on the loop's next turn only:
        # report now, so that a Pool closes its copy of the connection now.
        _finish(raw)

    def __del__(self) -> None:
        try:
            self._collected()
        except KeyboardInterrupt:
            interrupt_later()

    def _collected(self) -> None:
        raw = getattr(self, "_sock", None)
        # Closed already (gevent's closed proxy raises on any attribute), or
        # not ours (a dup()): the usual finalizer will do.
        if not isinstance(raw, _Fd) or getattr(self, "_closed", True):
            return
        lifetime = getattr(raw, "lifetime", None)
        if lifetime is None or raw.fileno() < 0:
            return
        raw.lifetime = None
        close_later(raw, not lifetime.shared, lifetime)


def interrupt_later() -> None:
    """Raise again, from the hub, a ``KeyboardInterrupt`` that landed in a ``__del__``.

    Python only prints an exception a finalizer raises: a Ctrl-C that
    arrived while one ran would be lost, and the process would go on. Raised
    in a hub callback, gevent throws it into the main greenlet.
    """
    try:
        gevent.get_hub().loop.run_callback(_raise_interrupt)
    except Exception:  # interpreter shutdown: nothing left to interrupt
        pass


def _raise_interrupt() -> None:
    raise KeyboardInterrupt


def gevent_socket(raw: _socket.socket, lifetime: Lifetime) -> ConnectionSocket:
    """A gevent socket that takes over ``raw``'s fd and runs ``lifetime`` when done."""
    sock = ConnectionSocket(raw.family, raw.type, raw.proto, fileno=raw.detach())
    # ``_sock`` is gevent's (the plain socket under its own), not ours; here an _Fd.
    sock._sock.lifetime = lifetime  # type: ignore[attr-defined]  # noqa: SLF001
    return sock


def close_later(raw: _socket.socket, graceful: bool, lifetime: Optional[Lifetime]) -> None:
    """Close ``raw`` (a plain socket nobody else holds) on the hub's next turn.

    For the garbage collector's paths: they may run in the middle of any
    code, so nothing is done here but scheduling.
    """
    try:
        gevent.get_hub().loop.run_callback(_linger_close, raw, graceful, lifetime)
    except Exception:  # no usable hub (interpreter shutdown): just close
        raw.close()


def _linger_close(raw: _socket.socket, graceful: bool, lifetime: Optional[Lifetime]) -> None:
    """Close ``raw`` as ``end()`` would, with loop watchers that hold no ``Socket``.

    Gracefully: shut the write side down (the peer gets EOF at once), read
    and drop what the peer sends until it closes or ``END_LINGER`` passes,
    then close; so closing never turns into a reset. Runs in the hub.
    """
    if graceful:
        try:
            raw.shutdown(_stdlib_socket.SHUT_WR)
        except OSError:
            graceful = False  # not connected any more: nothing to linger for
    if lifetime is not None:
        lifetime()
    if not graceful:
        raw.close()
        return
    loop = gevent.get_hub().loop
    watchers = (loop.io(raw.fileno(), 1), loop.timer(END_LINGER))

    def finish() -> None:
        for watcher in watchers:
            watcher.stop()
            watcher.close()
        raw.close()

    def drain() -> None:
        if discard_unread(raw):
            finish()

    watchers[1].start(finish)
    watchers[0].start(drain)


def discard_unread(raw: _socket.socket) -> bool:
    """Read and drop what ``raw`` has; True once the peer closed (or failed)."""
    try:
        while raw.recv(READ_SIZE, DONTWAIT):
            pass
    except BlockingIOError:
        return False
    except OSError:
        pass
    return True


class Accepted:
    """A connection ``accept`` returned, as its bare fd and peer address.

    Making a socket object costs a system call (CPython checks the fd with
    ``getsockname``), and a connection that is only handed on never needs one.
    """

    __slots__ = ("fd", "family", "type", "proto", "peer")

    def __init__(self, fd: int, family: int, type: int, proto: int, peer: Any) -> None:
        self.fd, self.family, self.type, self.proto, self.peer = fd, family, type, proto, peer

    def fileno(self) -> int:
        return self.fd

    def getpeername(self) -> Any:
        return self.peer

    def detach(self) -> int:
        fd, self.fd = self.fd, -1
        return fd

    def close(self) -> None:
        if self.fd >= 0:
            _socket.close(self.detach())

    def to_socket(self) -> _socket.socket:
        """A ``_socket.socket`` that takes over the fd."""
        return _socket.socket(self.family, self.type, self.proto, fileno=self.detach())
