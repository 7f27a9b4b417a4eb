"""``net.Socket.tcp_baseline``: what ``Pool`` compares a connection with
after its worker died, taken without system calls for a fresh connection.

For a connection as ``accept`` gave it, never used, the kernel's figures
(``tcp_progress``) are ``(False, 0, 0)`` whatever the client did meanwhile
(sent bytes, sent its FIN); ``tcp_baseline`` says the same without asking
(once the kernel was seen to give figures at all), and measures any other.
"""

import socket
import sys

import gevent
import pytest
from gevent.queue import Queue

from geventfork import _stream, net
from helpers import TIMEOUT, wait_until

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="tcp_progress says None off Linux"
)


@pytest.fixture
def accepted():
    """``accept(client_does)``: a fresh accepted ``net.Socket`` (paused,
    untouched) once the client ran ``client_does(sock)``, and the client."""
    queue = Queue()
    server = net.create_server(queue.put, pause_on_connect=True)
    server.listen(0, "127.0.0.1")
    made = []

    def accept(client_does):
        client = socket.create_connection(("127.0.0.1", server.address()["port"]), TIMEOUT)
        made.append(client)
        client_does(client)
        conn = queue.get(timeout=TIMEOUT)
        made.append(conn)
        return conn, client

    yield accept
    for each in made:
        each.destroy() if isinstance(each, net.Socket) else each.close()
    server.close()


def nothing(client):
    pass


def request(client):
    client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")


def request_and_fin(client):
    request(client)
    client.shutdown(socket.SHUT_WR)


def fin(client):
    client.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize("client_does", [nothing, request, request_and_fin, fin])
def test_fresh_connection_baseline_is_what_the_kernel_says(accepted, client_does, monkeypatch):
    monkeypatch.setattr(_stream, "_tcp_progress_seen", True)
    conn, _client = accepted(client_does)
    gevent.sleep(0.05)  # the client's bytes and FIN arrive
    assert conn.tcp_baseline() == (False, 0, 0)
    assert conn.tcp_progress() == (False, 0, 0)  # measured (the socket object made now)


def test_first_baseline_is_measured(accepted, monkeypatch):
    monkeypatch.setattr(_stream, "_tcp_progress_seen", False)
    conn, _client = accepted(request)
    assert conn.tcp_baseline() == (False, 0, 0)
    assert _stream._tcp_progress_seen is True


def test_a_used_connection_is_measured(accepted, monkeypatch):
    monkeypatch.setattr(_stream, "_tcp_progress_seen", True)
    conn, client = accepted(request)
    wait_until(lambda: conn.socket.recv(4, socket.MSG_PEEK) == b"GET ", "the request")
    assert conn.socket.recv(4) == b"GET "
    conn.socket.sendall(b"ab")
    wait_until(lambda: conn.tcp_baseline() == (False, 4, 2), "4 bytes read, 2 written")
