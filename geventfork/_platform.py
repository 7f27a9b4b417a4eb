"""Linux/macOS differences, feature-detected, in one place."""
from __future__ import annotations

import fcntl
import os
import socket
from array import array
from typing import Iterable

__all__ = ["RECV_FLAGS", "MAX_FDS_PER_READ", "anc_buffer_size", "fds_from_ancillary", "set_cloexec"]

#: Received fds are close-on-exec atomically where the kernel can do it
#: (Linux). Elsewhere ``fds_from_ancillary`` sets the flag on each one.
RECV_FLAGS = int(getattr(socket, "MSG_CMSG_CLOEXEC", 0))

#: Linux's ``SCM_MAX_FD``: the most fds one message can carry.
MAX_FDS_PER_READ = 253


def anc_buffer_size(nfds: int = MAX_FDS_PER_READ) -> int:
    """Room for ``nfds`` fds in one ``recvmsg`` ancillary buffer."""
    return socket.CMSG_SPACE(nfds * array("i").itemsize)


def fds_from_ancillary(ancdata: Iterable) -> list:
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
