"""``geventfork.net``: Node's ``net.Server`` and ``net.Socket`` on gevent."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import gevent
from gevent import socket as gsocket

from ._proxied import LOOPBACK, TIMEOUT
from ._server import Server
from ._stream import Socket

__all__ = ["create_server", "connect", "create_connection", "Server", "Socket"]


def create_server(
    connection_listener: Optional[Callable[[Socket], object]] = None,
    *,
    pause_on_connect: bool = False,
    allow_half_open: bool = False,
    proxy_protocol: bool = False,
    proxy_allow: Sequence[str] = LOOPBACK,
    proxy_timeout: float = TIMEOUT,
) -> Server:
    """A new ``Server``; ``connection_listener`` is added for ``'connection'``.

    ``proxy_protocol``, ``proxy_allow`` and ``proxy_timeout``: see ``Server``
    (connections start with a PROXY protocol header from a load balancer).
    """
    return Server(
        connection_listener,
        pause_on_connect=pause_on_connect,
        allow_half_open=allow_half_open,
        proxy_protocol=proxy_protocol,
        proxy_allow=proxy_allow,
        proxy_timeout=proxy_timeout,
    )


def connect(
    port: int, host: str = "127.0.0.1", callback: Optional[Callable[[], object]] = None
) -> Socket:
    """Connect to ``host:port``; blocks the calling greenlet (only) until connected.

    Unlike Node, a refused connection raises ``OSError`` here; ``'connect'``
    (and ``callback``) still follow asynchronously.
    """
    conn = Socket(gsocket.create_connection((host, port)))
    if callback is not None:
        conn.once("connect", callback)
    # Its own greenlet, not submit(): 'connect' must come before anything the
    # socket's reader (a greenlet of its own) emits, even when the caller is
    # a listener that then blocks with jobs queued behind it.
    gevent.spawn(conn.emit, "connect")
    return conn


create_connection = connect
