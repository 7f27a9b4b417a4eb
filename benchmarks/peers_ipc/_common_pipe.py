"""A ``multiprocessing`` Connection as ``(get, put)``, blocking or gevent-cooperative."""

from __future__ import annotations

import os
from multiprocessing.connection import Connection
from typing import Any, Callable, Tuple


def transport(conn: Connection, cooperative: bool) -> Tuple[Callable[[], Any], Callable]:
    """``(get, put)`` over ``conn``.

    Args:
        conn: one end of a ``multiprocessing.Pipe()``.
        cooperative: wait for the fd with gevent (``wait_read`` before each
            ``recv()``, ``wait_write`` before each ``send()``) instead of
            blocking the process.
    """
    fd = conn.fileno()
    # A Pipe made under gevent's patches is a non-blocking socket pair, which
    # Connection cannot use (a full buffer would raise mid-message): the
    # waits below are what keep it from blocking the hub.
    os.set_blocking(fd, True)
    if not cooperative:
        return conn.recv, conn.send
    from gevent.socket import wait_read, wait_write

    def get() -> Any:
        wait_read(fd)
        return conn.recv()

    def put(message: Any) -> None:
        wait_write(fd)
        conn.send(message)

    return get, put


def yield_to_loop() -> None:
    """Let gevent's loop take one turn, so that an fd just closed is closed.

    Since gevent 25.8.1 the patched ``os.close()`` closes the fd from a
    check watcher, which runs after the loop's next poll: a process that
    then waits for something only that close brings about (its child's exit
    on EOF) waits forever. While an idle watcher is active the loop polls
    without blocking, so the check watcher runs.
    """
    import gevent

    gevent.idle()
