"""What ``send()`` accepts as a handle: per-type conversion to and from an fd.

Like Node's ``handleConversion`` table: each kind of handle has a number on the
wire, a way to give up its fd for sending, a way to let go of the sender's copy
once the receiver acknowledged it, and a way to rebuild it from a received fd.
"""

from __future__ import annotations

import _socket
import struct
from typing import Callable, Dict, NamedTuple, Optional, Tuple, Union

from gevent import socket as gsocket

from ._lifetime import HostPort
from ._server import Server
from ._stream import Socket
from .errors import InvalidHandleTypeError, ProtocolError

__all__ = [
    "Handle",
    "Outgoing",
    "check",
    "to_wire",
    "from_wire",
    "split_peer",
    "tracked",
    "close",
]

#: What ``send()`` accepts as a handle, and what a received one is rebuilt as.
#: gevent's socket is no subclass of ``_socket.socket``: both are named.
Handle = Union[Socket, Server, _socket.socket, gsocket.socket]

# Handle numbers on the wire (a frame's ``handle`` byte). Never reuse one.
SOCKET = 1  # net.Socket
SERVER = 2  # net.Server
RAW = 3  # socket.socket or gevent socket, any family and type

# Flag bits in a frame's ``flags`` byte.
PAUSED = 1  # net.Socket: nothing has read from it; the receiver keeps it paused
TCP4 = 2  # net.Socket: a TCP socket over IPv4 (the receiver need not ask the kernel)
TCP6 = 4  # net.Socket: a TCP socket over IPv6
TRACKED = 8  # net.Socket: the sender keeps a copy; tell it (DONE) when done with it
#: net.Socket: the payload ends with the peer's IP address, which the codec
#: never sees: 4 (IPv4) or 16 (IPv6) address bytes, the port (u16 BE), then
#: that address's size in one byte. The receiver need not ask the kernel
#: (``getpeername``), and a sender that learnt the client's address
#: otherwise (a PROXY protocol header, whose client may be IPv6 behind an
#: IPv4 balancer, or be behind a Unix socket) passes that one on.
PEER = 16
#: The longest ``PEER`` trailer, in bytes: it counts towards the frame's size.
MAX_TRAILER = 19
PAUSE_ON_CONNECT = 1  # net.Server
ALLOW_HALF_OPEN = 2  # net.Server


class Outgoing(NamedTuple):
    """A handle ready to send: its wire number, flags and fd."""

    code: int
    flags: int
    fd: int
    #: ``release(keep_open)``: the receiver acknowledged; close our copy unless
    #: ``keep_open``.
    release: Callable[[bool], None]
    #: ``returned()``: the hand-off failed (NACK, the channel closed, the
    #: kernel refused the fd); the handle is ours again, untouched.
    returned: Callable[[], None]
    #: ``abandon()``: after ``returned()``, when nobody will send it again:
    #: a ``net.Socket`` is ended gracefully, so its client gets EOF.
    abandon: Callable[[], object]
    #: What ends the frame's payload: the peer's address (``PEER``), or nothing.
    trailer: bytes = b""


#: Plain sockets on their way to a peer, by ``id`` (a ``net.Socket`` knows its
#: own). Keyed by the object, not its fd: a socket closed while in flight may
#: see its fd number reused at once by another.
_raw_in_flight: Dict[int, Union[_socket.socket, gsocket.socket]] = {}


def _nothing(*args: object) -> None:
    pass


def check(handle: object) -> None:
    """Raise ``InvalidHandleTypeError`` unless ``send()`` accepts ``handle``."""
    if not isinstance(handle, (Socket, Server, _socket.socket, gsocket.socket)):
        raise _invalid(handle)


def _invalid(handle: object) -> InvalidHandleTypeError:
    return InvalidHandleTypeError(
        f"handle must be a net.Socket, a net.Server or a socket, not {type(handle).__name__}"
    )


def to_wire(handle: object, track: bool = False) -> Outgoing:
    """Prepare ``handle`` for sending.

    Args:
        handle: what ``send()`` was given.
        track: ask the receiver to say when it is done with a ``net.Socket``.

    Raises:
        InvalidHandleTypeError: not a kind of handle ``send()`` accepts, or
            already closed.
        ValueError: ``handle`` is already on its way to a peer.
    """
    if isinstance(handle, Socket):
        peer = handle.handoff_peer()
        fd, family, kind = handle.handoff_start()
        flags = (PAUSED if handle.is_paused else 0) | _tcp_flag(family, kind)
        if track:
            flags |= TRACKED
        trailer = _pack_peer(peer)
        if trailer:
            flags |= PEER
        return Outgoing(
            SOCKET,
            flags,
            fd,
            handle.on_handoff_released,
            handle.on_handoff_returned,
            handle.end,
            trailer,
        )
    if isinstance(handle, Server):
        fd = handle.handoff_start()
        flags = (PAUSE_ON_CONNECT if handle.pause_on_connect else 0) | (
            ALLOW_HALF_OPEN if handle.allow_half_open else 0
        )
        # Node keeps the sender's server open: both processes may accept.
        return Outgoing(SERVER, flags, fd, _nothing, _nothing, _nothing)
    # Under patch_all() ``socket.socket`` is gevent's class, which an
    # unpatched ``socket.socket`` (monkey.get_original) is no instance of;
    # every stdlib socket derives from ``_socket.socket``, patched or not.
    if isinstance(handle, (_socket.socket, gsocket.socket)):
        return _raw_to_wire(handle)
    raise _invalid(handle)


def _raw_to_wire(sock: Union[_socket.socket, gsocket.socket]) -> Outgoing:
    fd = sock.fileno()
    if fd < 0:
        raise InvalidHandleTypeError("cannot send a closed socket")
    key = id(sock)
    if key in _raw_in_flight:
        raise ValueError(f"socket fd {fd} is already being sent; wait for its callback")
    _raw_in_flight[key] = sock

    def returned() -> None:
        _raw_in_flight.pop(key, None)

    def release(keep_open: bool) -> None:
        returned()
        if not keep_open:
            sock.close()

    return Outgoing(RAW, 0, fd, release, returned, sock.close)


_PORT = struct.Struct("!H")


def _pack_peer(peer: Optional[HostPort]) -> bytes:
    """The ``PEER`` trailer for ``peer``, or b"" unless it is an IP address and port."""
    if peer is None or peer[0] is None or peer[1] is None:
        return b""
    host = peer[0]
    try:
        packed = _socket.inet_pton(_socket.AF_INET6 if ":" in host else _socket.AF_INET, host)
        return packed + _PORT.pack(peer[1]) + bytes((len(packed),))
    except (OSError, ValueError, struct.error):  # not an IP address (a Unix socket's path)
        return b""


def split_peer(code: int, flags: int, payload: bytes) -> Tuple[bytes, Optional[HostPort]]:
    """A received frame's payload without its ``PEER`` trailer, and that address.

    Raises:
        ProtocolError: the trailer is malformed.
    """
    if code != SOCKET or not flags & PEER:
        return payload, None
    size = payload[-1] if payload else 0
    if size not in (4, 16) or len(payload) < size + 3:
        raise ProtocolError("a socket's frame ends with no valid peer address", payload[-19:])
    family = _socket.AF_INET if size == 4 else _socket.AF_INET6
    address = payload[-size - 3 : -3]
    (port,) = _PORT.unpack_from(payload, len(payload) - 3)
    return payload[: -size - 3], (_socket.inet_ntop(family, address), port)


def tracked(code: int, flags: int) -> bool:
    """Whether a received handle's sender asked to hear when it is done with it."""
    return code == SOCKET and bool(flags & TRACKED)


def from_wire(
    code: int,
    flags: int,
    fd: int,
    on_done: Optional[Callable[[], object]] = None,
    peer: Optional[HostPort] = None,
) -> Handle:
    """Rebuild a handle the peer sent; the new object owns ``fd``.

    Args:
        on_done: for a ``net.Socket``, called once this process is done with it.
        peer: for a ``net.Socket``, its remote address (``split_peer``).

    Raises:
        ValueError: unknown handle number (the caller closes ``fd``).
    """
    if code == SOCKET:
        return Socket(
            _stream_socket(flags, fd), paused=bool(flags & PAUSED), on_done=on_done, peer=peer
        )
    if code == SERVER:
        return Server.from_handoff(
            gsocket.socket(fileno=fd),
            pause_on_connect=bool(flags & PAUSE_ON_CONNECT),
            allow_half_open=bool(flags & ALLOW_HALF_OPEN),
        )
    if code == RAW:
        return gsocket.socket(fileno=fd)
    raise ValueError(f"unknown handle type {code}")


def _tcp_flag(family: int, kind: int) -> int:
    """``TCP4``, ``TCP6`` or 0 for a socket of ``family`` and type ``kind``."""
    if kind != _socket.SOCK_STREAM:
        return 0
    return TCP4 if family == _socket.AF_INET else TCP6 if family == _socket.AF_INET6 else 0


def _stream_socket(flags: int, fd: int) -> _socket.socket:
    """A socket object for a received ``net.Socket``'s fd.

    Told the family, CPython skips the two ``getsockopt`` calls it would make
    to find out: one hand-off in three is spent in system calls. A TCP
    connection gets ``TCP_NODELAY``, as Node's HTTP server and gunicorn set
    it: a worker that answers in two writes (``gevent.pywsgi``: headers, then
    body) otherwise waits 40 ms per answer for the client's delayed ACK.
    ``set_no_delay(False)`` undoes it.
    """
    family = _socket.AF_INET if flags & TCP4 else _socket.AF_INET6 if flags & TCP6 else None
    if family is None:
        return _socket.socket(fileno=fd)
    sock = _socket.socket(family, _socket.SOCK_STREAM, _socket.IPPROTO_TCP, fileno=fd)
    try:
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
    except OSError:  # already reset by the client: its first use will say so
        pass
    return sock


def close(handle: Handle) -> None:
    """Close a received handle nobody will take."""
    if isinstance(handle, Socket):
        handle.destroy()
    else:
        handle.close()
