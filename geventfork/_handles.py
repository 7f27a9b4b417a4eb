"""What ``send()`` accepts as a handle: per-type conversion to and from an fd.

Like Node's ``handleConversion`` table: each kind of handle has a number on the
wire, a way to give up its fd for sending, a way to let go of the sender's copy
once the receiver acknowledged it, and a way to rebuild it from a received fd.
"""
from __future__ import annotations

import _socket
from typing import Any, Callable, NamedTuple

from gevent import socket as gsocket

from ._server import Server
from ._stream import Socket
from .errors import InvalidHandleTypeError

__all__ = ["Outgoing", "check", "to_wire", "from_wire", "close"]

# Handle numbers on the wire (a frame's ``handle`` byte). Never reuse one.
SOCKET = 1  # net.Socket
SERVER = 2  # net.Server
RAW = 3  # socket.socket or gevent socket, any family and type

# Flag bits in a frame's ``flags`` byte.
PAUSED = 1  # net.Socket: nothing has read from it; the receiver keeps it paused
TCP4 = 2  # net.Socket: a TCP socket over IPv4 (the receiver need not ask the kernel)
TCP6 = 4  # net.Socket: a TCP socket over IPv6
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


def check(handle: Any) -> None:
    """Raise ``InvalidHandleTypeError`` unless ``send()`` accepts ``handle``."""
    if not isinstance(handle, (Socket, Server, _socket.socket, gsocket.socket)):
        raise _invalid(handle)


def _invalid(handle: Any) -> InvalidHandleTypeError:
    return InvalidHandleTypeError(
        "handle must be a net.Socket, a net.Server or a socket, "
        f"not {type(handle).__name__}"
    )


def to_wire(handle: Any) -> Outgoing:
    """Prepare ``handle`` for sending.

    Raises:
        InvalidHandleTypeError: not a kind of handle ``send()`` accepts, or
            already closed.
    """
    if isinstance(handle, Socket):
        fd = handle._handoff()
        flags = (PAUSED if handle._paused else 0) | _tcp_flag(handle._sock)
        return Outgoing(SOCKET, flags, fd, handle._release)
    if isinstance(handle, Server):
        fd = handle._listening_fd()
        flags = (PAUSE_ON_CONNECT if handle.pause_on_connect else 0) | (
            ALLOW_HALF_OPEN if handle.allow_half_open else 0
        )
        # Node keeps the sender's server open: both processes may accept.
        return Outgoing(SERVER, flags, fd, lambda keep_open: None)
    # Under patch_all() ``socket.socket`` is gevent's class, which an
    # unpatched ``socket.socket`` (monkey.get_original) is no instance of;
    # every stdlib socket derives from ``_socket.socket``, patched or not.
    if isinstance(handle, (_socket.socket, gsocket.socket)):
        fd = handle.fileno()
        if fd < 0:
            raise InvalidHandleTypeError("cannot send a closed socket")
        return Outgoing(RAW, 0, fd, lambda keep_open: keep_open or handle.close())
    raise _invalid(handle)


def from_wire(code: int, flags: int, fd: int) -> Any:
    """Rebuild a handle the peer sent; the new object owns ``fd``.

    Raises:
        ValueError: unknown handle number (the caller closes ``fd``).
    """
    if code == SOCKET:
        return Socket(_stream_socket(flags, fd), paused=bool(flags & PAUSED))
    if code == SERVER:
        return Server._from_listener(
            gsocket.socket(fileno=fd),
            pause_on_connect=bool(flags & PAUSE_ON_CONNECT),
            allow_half_open=bool(flags & ALLOW_HALF_OPEN),
        )
    if code == RAW:
        return gsocket.socket(fileno=fd)
    raise ValueError(f"unknown handle type {code}")


def _tcp_flag(sock: Any) -> int:
    if sock.type != _socket.SOCK_STREAM:
        return 0
    return TCP4 if sock.family == _socket.AF_INET else TCP6 if sock.family == _socket.AF_INET6 else 0


def _stream_socket(flags: int, fd: int) -> Any:
    """A socket object for a received ``net.Socket``'s fd.

    Told the family, CPython skips the two ``getsockopt`` calls it would make
    to find out: one hand-off in three is spent in system calls.
    """
    family = _socket.AF_INET if flags & TCP4 else _socket.AF_INET6 if flags & TCP6 else None
    if family is None:
        return _socket.socket(fileno=fd)
    return _socket.socket(family, _socket.SOCK_STREAM, _socket.IPPROTO_TCP, fileno=fd)


def close(handle: Any) -> None:
    """Close a received handle nobody will take."""
    destroy = getattr(handle, "destroy", None) or handle.close
    destroy()
