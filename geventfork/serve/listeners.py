"""The parent's listening sockets: one ``net.Server`` per ``--bind``.

Every server is made with ``pause_on_connect``: the parent reads nothing of a
connection, it only picks a pool and hands the socket on. Nothing but a PROXY
protocol header, with ``--proxy-protocol``: ``net.Server`` reads exactly its
bytes, and the socket's ``remote_address`` is then the client's.
"""

from __future__ import annotations

import errno
import os
import socket as _stdlib_socket
import stat
from dataclasses import dataclass
from typing import List, Optional, Sequence

from gevent import socket as gsocket

from .. import net
from .settings import PROXY_ALLOW, PROXY_TIMEOUT, Bind

__all__ = ["BindError", "Listener", "Proxy", "listen_all", "BACKLOG"]

#: The listen backlog of every bind (gunicorn's ``--backlog`` default is 2048;
#: Node's 511, which the kernel rounds up to a power of two minus one).
BACKLOG = 2048


class BindError(Exception):
    """A ``--bind`` could not be listened on: the user's (or another
    program's) doing. ``str()`` is the one line to show."""


@dataclass(frozen=True)
class Proxy:
    """``--proxy-allow`` and ``--proxy-timeout``: whose PROXY protocol headers
    every bind believes, and how long it waits for one."""

    allow: Sequence[str] = PROXY_ALLOW
    timeout: float = PROXY_TIMEOUT


class Listener:
    """One ``--bind`` and the server listening on it."""

    def __init__(self, bind: Bind, server: net.Server, inode: Optional[int] = None) -> None:
        self.bind = bind
        self.server = server
        self._inode = inode  # a Unix socket file's, to remove only our own

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` with the port actually bound, or ``unix:PATH``."""
        if self.bind.path is not None:
            return f"unix:{self.bind.path}"
        address = self.server.address()
        host, port = address["address"], address["port"]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def close(self) -> None:
        """Stop listening; remove a Unix socket's file if it is still ours."""
        self.server.close()
        path = self.bind.path
        if path is None or self._inode is None:
            return
        try:
            if os.lstat(path).st_ino == self._inode:
                os.unlink(path)
        except OSError:
            pass
        self._inode = None


def listen_all(binds: List[Bind], proxy: Optional[Proxy] = None) -> List[Listener]:
    """Listen on every bind, or on none.

    Args:
        binds: where to listen.
        proxy: connections start with a PROXY protocol header, believed from
            ``proxy.allow``; None: they do not.

    Raises:
        BindError: one of them failed (those already listening are closed).
    """
    listeners: List[Listener] = []
    try:
        for bind in binds:
            listeners.append(_listen(bind, proxy))
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners


def _listen(bind: Bind, proxy: Optional[Proxy]) -> Listener:
    try:
        server = _server(proxy)
        if bind.path is not None:
            return _listen_unix(bind, bind.path, server)
        server.listen(bind.port, bind.host or "0.0.0.0", BACKLOG)
        return Listener(bind, server)
    except (OSError, ValueError) as exc:  # ValueError: a bad proxy.allow
        raise BindError(f"cannot listen on {bind}: {_reason(exc)}") from None


def _server(proxy: Optional[Proxy]) -> net.Server:
    if proxy is None:
        return net.create_server(pause_on_connect=True)
    return net.create_server(
        pause_on_connect=True,
        proxy_protocol=True,
        proxy_allow=proxy.allow,
        proxy_timeout=proxy.timeout,
    )


def _listen_unix(bind: Bind, path: str, server: net.Server) -> Listener:
    _remove_stale(path)
    server.listen(backlog=BACKLOG, path=path)
    try:
        inode = os.lstat(path).st_ino
    except OSError:
        server.close()
        raise
    return Listener(bind, server, inode)


def _remove_stale(path: str) -> None:
    """Remove the socket file at ``path`` if nothing listens on it (a server
    that was killed leaves its file behind); leave anything else alone.

    Raises:
        OSError: ``EADDRINUSE`` when a server listens there; ``EEXIST`` when
            ``path`` is not a socket.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, "a file that is not a socket is in the way")
    probe = gsocket.socket(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: a stale file
        return
    except OSError:
        return  # let bind() say what is wrong
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))


def _reason(exc: Exception) -> str:
    """The cause in a few words: ``address already in use``."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]
