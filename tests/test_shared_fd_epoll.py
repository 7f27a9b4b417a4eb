"""Closing a connection another process still holds leaves nothing in our epoll set.

epoll registers the open file, not the fd: while another process (here: a
``dup`` standing in for the pool's kept copy) holds the connection, closing
our fd does not take it out of the event loop's epoll set, and libev never
does (it stops watching lazily). A connection that then turns readable is
reported for a closed fd, and libev rebuilds its whole epoll set, once per
connection. ``_platform.forget_fd`` takes the fd out before each close; the
kernel's own list (``/proc/self/fdinfo`` of the loop's epoll fd) shows it.
"""

import _socket
import os
import re
import sys

import gevent
import pytest

from geventfork import _platform
from geventfork._stream import Socket
from helpers import TIMEOUT, wait_until

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="epoll and /proc are Linux's"
)


def watched_fds():
    """The fds the hub's epoll set holds, as the kernel lists them."""
    loop_fd = gevent.get_hub().loop.fileno()
    with open(f"/proc/self/fdinfo/{loop_fd}") as info:
        return {int(fd) for fd in re.findall(r"^tfd:\s*(\d+)", info.read(), re.M)}


@pytest.fixture
def shared_pair():
    """``(ours, peer)``: a connected pair; ``ours`` is also held by a dup
    (another process's copy) until the test ends."""
    ours, peer = _socket.socketpair()
    copy = os.dup(ours.fileno())
    yield ours, peer
    os.close(copy)
    peer.close()


def test_gevent_socket_close_forgets_its_fd(shared_pair):
    ours, peer = shared_pair
    net_socket = Socket(ours)
    sock = net_socket.socket
    fd = sock.fileno()
    reader = gevent.spawn(sock.recv, 1)
    # It waits for readability: the fd goes into the epoll set.
    wait_until(lambda: fd in watched_fds(), "the fd watched")
    peer.send(b"ab")  # one byte left unread: readable from here on
    assert reader.get(timeout=TIMEOUT) == b"a"
    net_socket.destroy()
    assert fd not in watched_fds()


def test_end_forgets_its_fd_after_lingering(shared_pair):
    ours, peer = shared_pair
    net_socket = Socket(ours)  # its gevent socket never handed out
    fd = ours.fileno()
    seen = []
    net_socket.on("close", lambda had_error: seen.append(fd in watched_fds()))
    net_socket.end()  # lingers: watches the fd until the peer closes
    wait_until(lambda: fd in watched_fds(), "the fd watched")
    peer.shutdown(_socket.SHUT_WR)  # the peer's FIN: readable for good
    wait_until(lambda: seen, "the close")
    assert seen == [False]


def test_forget_fd_of_an_fd_never_watched_does_nothing(shared_pair):
    ours, _peer = shared_pair
    before = watched_fds()
    _platform.forget_fd(ours.fileno())
    assert watched_fds() == before
    ours.close()
