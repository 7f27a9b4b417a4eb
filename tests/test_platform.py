"""``_platform.tcp_progress``: what has happened to a TCP connection.

A Pool compares a connection's progress with what it was when it was handed
to a worker, to tell whether the worker did anything with it. These tests
drive real TCP connections on 127.0.0.1 and check each part of
``(shut, consumed, written)`` against what was done to the socket.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from typing import Iterator

import pytest

from geventfork._platform import tcp_progress
from helpers import TIMEOUT, wait_until

pytestmark = pytest.mark.skipif(
    not hasattr(socket, "TCP_INFO"), reason="no TCP_INFO: tcp_progress always says None"
)


@contextmanager
def connection() -> Iterator[tuple]:
    """An established TCP connection on 127.0.0.1: ``(ours, peer)``, both closed after."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        peer = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        try:
            ours, _ = listener.accept()
            with ours:
                ours.settimeout(TIMEOUT)
                yield ours, peer
        finally:
            peer.close()


def wait_readable(sock: socket.socket, count: int) -> None:
    """Wait until ``count`` bytes (or EOF, for 0) wait unread in ``sock``; read none."""
    if count == 0:
        assert sock.recv(1, socket.MSG_PEEK) == b"", "expected the peer's EOF"
        return
    wait_until(
        lambda: len(sock.recv(count, socket.MSG_PEEK)) == count, f"{count} bytes from the peer"
    )


def test_an_untouched_connection_keeps_its_baseline() -> None:
    with connection() as (ours, peer):
        baseline = tcp_progress(ours)
        assert baseline is not None
        shut, consumed, written = baseline
        assert shut is False
        assert tcp_progress(ours) == baseline
        assert tcp_progress(peer) is not None


def test_bytes_arrived_but_unread_are_not_progress() -> None:
    with connection() as (ours, peer):
        baseline = tcp_progress(ours)
        peer.sendall(b"hello")
        wait_readable(ours, 5)
        assert tcp_progress(ours) == baseline


def test_reading_the_peers_bytes_grows_consumed() -> None:
    with connection() as (ours, peer):
        shut, consumed, written = tcp_progress(ours)
        peer.sendall(b"hello")
        wait_readable(ours, 5)
        assert ours.recv(2) == b"he"
        assert tcp_progress(ours) == (shut, consumed + 2, written)
        assert ours.recv(3) == b"llo"
        assert tcp_progress(ours) == (shut, consumed + 5, written)


def test_writing_grows_written() -> None:
    with connection() as (ours, peer):
        shut, consumed, written = tcp_progress(ours)
        ours.sendall(b"abc")
        # Acknowledged or not, each byte counts once; wait out an ACK that
        # arrives between the two reads tcp_progress makes.
        wait_until(
            lambda: tcp_progress(ours) == (shut, consumed, written + 3),
            "3 bytes counted as written",
        )
        assert peer.recv(3) == b"abc"
        wait_until(
            lambda: tcp_progress(ours) == (shut, consumed, written + 3),
            "the count unchanged once the peer acknowledged",
        )


def test_shutting_down_our_side_sets_shut() -> None:
    with connection() as (ours, peer):
        shut, consumed, written = tcp_progress(ours)
        ours.shutdown(socket.SHUT_WR)
        now_shut, now_consumed, _ = tcp_progress(ours)
        # ``written`` is not checked: our FIN takes a sequence number, which
        # the kernel counts (unlike the peer's FIN, nothing corrects for it).
        assert (now_shut, now_consumed) == (True, consumed)


def test_the_peers_shutdown_is_neither_shut_nor_consumed() -> None:
    # Its FIN takes a sequence number, which the kernel counts as a byte received.
    with connection() as (ours, peer):
        baseline = tcp_progress(ours)
        peer.shutdown(socket.SHUT_WR)
        wait_readable(ours, 0)
        assert tcp_progress(ours) == baseline


def test_a_unix_socket_gives_none() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert tcp_progress(a) is None


def test_a_closed_socket_gives_none() -> None:
    closed = socket.socket()
    closed.close()
    assert tcp_progress(closed) is None
