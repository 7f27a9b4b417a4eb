"""Linux/macOS differences, feature-detected, in one place."""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import sys
import termios
from array import array
from typing import Any, Iterable, List, Optional, Tuple

from gevent._hub_local import get_hub_if_exists

from ._wire import MAX_FDS

__all__ = [
    "RECV_FLAGS",
    "anc_buffer_size",
    "fds_from_ancillary",
    "set_cloexec",
    "tcp_progress",
    "running",
    "forget_fd",
]

#: Received fds are close-on-exec atomically where the kernel can do it
#: (Linux). Elsewhere ``fds_from_ancillary`` sets the flag on each one.
RECV_FLAGS = int(getattr(socket, "MSG_CMSG_CLOEXEC", 0))


def anc_buffer_size(nfds: int = MAX_FDS) -> int:
    """Room for ``nfds`` fds in one ``recvmsg`` ancillary buffer (the wire's
    ``MAX_FDS``, Linux's ``SCM_MAX_FD``, by default)."""
    return socket.CMSG_SPACE(nfds * array("i").itemsize)


def fds_from_ancillary(ancdata: Iterable[Tuple[int, int, bytes]]) -> List[int]:
    """The fds an ``SCM_RIGHTS`` ancillary list carries, close-on-exec."""
    fds = array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if not RECV_FLAGS:
        for fd in fds:
            set_cloexec(fd)
    return fds.tolist()


def set_cloexec(fd: int) -> None:
    """Mark ``fd`` close-on-exec (``MSG_CMSG_CLOEXEC``'s fallback)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFD)
    fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)


def close_quietly(fd: int) -> None:
    """Close ``fd``, ignoring one already closed."""
    try:
        os.close(fd)
    except OSError:
        pass


# Linux ``struct tcp_info``: tcpi_state is byte 0; tcpi_bytes_acked and
# tcpi_bytes_received (u64, Linux 4.1+) are at offsets 120 and 128.
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_TCP_INFO_SIZE = 136
_BYTES = struct.Struct("=QQ")
_BYTES_OFFSET = 120
_ESTABLISHED, _CLOSE_WAIT = 1, 8
_OUTQ = getattr(termios, "TIOCOUTQ", None)  # SIOCOUTQ: bytes not yet acked by the peer


def _ioctl_int(fd: int, request: int) -> int:
    value: int = struct.unpack("i", fcntl.ioctl(fd, request, b"\0\0\0\0"))[0]
    return value


def tcp_progress(sock: socket.socket) -> Optional[Tuple[bool, int, int]]:
    """What has happened to a TCP connection: ``(shut, consumed, written)``.

    ``shut``: no longer open both ways from our side; ``consumed``: bytes
    read from it, by any process; ``written``: bytes written to it. None
    where the kernel does not say (not Linux, not TCP, closed).
    """
    if _TCP_INFO is None or _OUTQ is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_SIZE)
        unread = _ioctl_int(sock.fileno(), termios.FIONREAD)
        unacked = _ioctl_int(sock.fileno(), _OUTQ)
    except OSError:
        return None
    if len(info) < _TCP_INFO_SIZE:
        return None
    state = info[0]
    acked, received = _BYTES.unpack_from(info, _BYTES_OFFSET)
    fin = 1 if state == _CLOSE_WAIT else 0  # the peer's FIN counts as a byte received
    return (state not in (_ESTABLISHED, _CLOSE_WAIT), received - fin - unread, acked + unacked)


def _epoll_ctl() -> Optional[Any]:
    """libc's ``epoll_ctl`` (Linux), else None. (Not ``select.epoll``:
    gevent's patching removes it.)"""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None).epoll_ctl
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    function.restype = ctypes.c_int
    return function


_EPOLL_CTL = _epoll_ctl()
_EPOLL_CTL_DEL = 2  # Linux's


def forget_fd(fd: int) -> None:
    """Take ``fd`` out of this thread's event loop's epoll set; call it just
    before closing ``fd``. Never raises.

    epoll watches an open file, not an fd: when another process holds the
    same connection (a ``Pool`` keeps its copy until the worker is done),
    closing the fd here leaves the file in our epoll set. libev stops
    watching an fd without telling the kernel, so a connection that turns
    readable after its last watcher stopped (the client's FIN) is reported
    for an fd that is gone; libev then rebuilds its whole epoll set (a new
    epoll fd, every watched fd added again): once per connection served.
    """
    if _EPOLL_CTL is None:
        return
    hub = get_hub_if_exists()
    if hub is None or getattr(hub.loop, "backend", None) != "epoll":
        return
    # ENOENT (never watched here) and the like: nothing to forget.
    _EPOLL_CTL(hub.loop.fileno(), _EPOLL_CTL_DEL, fd, None)


def running(pid: int) -> bool:
    """Whether our child ``pid`` has not exited yet; does not reap it."""
    if not hasattr(os, "waitid"):
        return True
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:  # reaped already
        return False
