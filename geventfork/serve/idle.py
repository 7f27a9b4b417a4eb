"""Keep-alive connections the workers handed back, watched by the parent.

A worker hands back a connection that sat idle between requests (for
``--idle-return`` seconds, or at once when it retires), with the bytes it had
already read of the next request. The parent watches each one with a loop io
watcher, reading nothing: when it turns readable, a peek of one byte tells a
new request (hand it to a worker again) from the client's close (close our
copy). A watched connection costs one fd and two watchers, no greenlet;
one idle for ``keep_alive`` seconds here is closed, so that clients that
never come back cannot pile up fds in the parent.
"""

from __future__ import annotations

import socket as _stdlib_socket
from typing import TYPE_CHECKING, Any, Callable, Dict, Tuple

import gevent

from ..net import Socket

if TYPE_CHECKING:  # pragma: no cover
    from gevent._types import _IoWatcher, _TimerWatcher

__all__ = ["IdleConnections"]

#: Flags of the peek: look at one byte without taking it, never wait.
PEEK = int(_stdlib_socket.MSG_PEEK | _stdlib_socket.MSG_DONTWAIT)

#: Default seconds the parent holds an idle connection before closing it
#: (``--keep-alive``; nginx's ``keepalive_timeout`` is 75 s too).
KEEP_ALIVE = 75.0

#: ``on_request(connection, head)``: a connection's next request arrived.
OnRequest = Callable[[Socket, str], Any]


class IdleConnections:
    """The connections the parent holds between two requests.

    Args:
        on_request: called, in a greenlet of its own, with a connection whose
            next request arrived (or was read already) and the bytes of it a
            worker had read (``head``, a latin-1 ``str``).
    """

    def __init__(self, on_request: OnRequest, keep_alive: float = KEEP_ALIVE) -> None:
        self._on_request = on_request
        self.keep_alive = keep_alive
        self._watched: Dict[int, Tuple[_IoWatcher, _TimerWatcher]] = {}  # id(conn) -> watchers
        self._connections: Dict[int, Socket] = {}

    def __len__(self) -> int:
        return len(self._watched)

    def add(self, conn: Socket, head: str) -> None:
        """Hold ``conn`` until its next request arrives, or its client closes.

        A connection handed back with part of its next request read already
        (``head``) goes on at once.
        """
        if head:
            gevent.spawn(self._on_request, conn, head)
            return
        sock = conn.socket
        sock.settimeout(0.0)  # the peek runs in the hub: it must never wait
        loop = gevent.get_hub().loop
        watcher = loop.io(sock.fileno(), 1, ref=False)
        timer = loop.timer(self.keep_alive, ref=False)
        self._watched[id(conn)] = (watcher, timer)
        self._connections[id(conn)] = conn
        watcher.start(self._readable, conn)
        timer.start(self._expired, conn)

    def close_all(self) -> None:
        """Close every connection held, gracefully (the clients get EOF)."""
        for conn in list(self._connections.values()):
            self._forget(conn)
            conn.end()

    def _forget(self, conn: Socket) -> None:
        watchers = self._watched.pop(id(conn), None)
        self._connections.pop(id(conn), None)
        for watcher in watchers or ():
            watcher.stop()
            watcher.close()

    def _expired(self, conn: Socket) -> None:
        """Runs in the hub: idle for ``keep_alive`` s here: close it, as
        gunicorn closes a keep-alive connection idle past its limit."""
        self._forget(conn)
        conn.end()

    def _readable(self, conn: Socket) -> None:
        """Runs in the hub: tell a new request from the client's close."""
        try:
            data = conn.socket.recv(1, PEEK)
        except BlockingIOError:
            return  # woken for nothing: go on watching
        except OSError:
            self._forget(conn)
            conn.destroy()  # reset by the client: nothing to be graceful with
            return
        self._forget(conn)
        if not data:
            conn.end()  # the client closed: close ours without a reset
            return
        conn.socket.settimeout(None)
        gevent.spawn(self._on_request, conn, "")
