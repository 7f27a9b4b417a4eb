"""``geventfork.serve.wsgi``: one handed-off connection served by pywsgi, in-process.

A real TCP connection: a ``net.Server`` (``pause_on_connect``, as the parent
accepts) gives each accepted ``net.Socket`` to a ``wsgi.Connection`` whose
host is a ``Recorder`` standing in for the worker: it records requests and
hand-backs, and can serve a handed-back connection again with its head, as
the next worker would.
"""

import _socket
import http.client
import logging
import socket
import sys
import time

import gevent
import pytest
from gevent.queue import Queue

from geventfork import net
from geventfork.serve import wsgi
from helpers import CHILDREN_DIR, TIMEOUT, read_to_eof, take_one, wait_until

sys.path.insert(0, CHILDREN_DIR)
from serve_apps import app  # noqa: E402

GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


class Recorder:
    """The worker, as a ``Connection`` sees it (``wsgi.Host``)."""

    def __init__(self, idle_return):
        self.idle_return = idle_return
        self.leaving = None
        self.idle = set()
        self.requests = []  # (request line, status code, body length)
        self.handed = Queue()  # (net_socket, head) of each hand-back
        self.closed_sockets = []  # the connections ended here

    def waiting(self, connection, idle):
        (self.idle.add if idle else self.idle.discard)(connection)

    def requested(self, handler):
        self.requests.append((handler.requestline, handler.code, handler.body_length))

    def hand_back(self, net_socket, head):
        self.handed.put((net_socket, head))

    def closed(self, net_socket):
        self.closed_sockets.append(net_socket)

    def leave(self, reason):
        self.leaving = reason
        for connection in list(self.idle):
            connection.wake(reason)


class Site:
    """A listening ``net.Server`` whose connections ``wsgi.Connection`` serves."""

    def __init__(self, idle_return=0.0, head=b""):
        self.host = Recorder(idle_return)
        self.server = wsgi.make_server(app, logging.getLogger("geventfork.serve"))
        self.head = head
        self.listener = net.create_server(self.serve, pause_on_connect=True)
        self.listener.listen(0, "127.0.0.1")
        self.port = self.listener.address()["port"]
        self.greenlets = []

    def serve(self, net_socket, head=None):
        """Serve ``net_socket`` (again, for one handed back) in a greenlet."""
        head = self.head if head is None else head
        connection = wsgi.Connection(self.server, self.host, net_socket, head)
        self.greenlets.append(gevent.spawn(connection.serve))

    def client(self):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        return sock

    def close(self):
        self.listener.close()
        gevent.joinall(self.greenlets, timeout=TIMEOUT)
        while not self.host.handed.empty():
            self.host.handed.get()[0].destroy()


@pytest.fixture
def site():
    made = []

    def make(**options):
        made.append(Site(**options))
        return made[-1]

    yield make
    for each in made:
        each.close()


def read_response(sock):
    """One response (with a Content-Length) from a raw socket, and nothing after
    it: (head, body). Peeks until it is all there, then takes just that."""
    with gevent.Timeout(TIMEOUT, AssertionError("no whole response")):
        while True:
            data = sock.recv(65536, socket.MSG_PEEK)
            assert data, "EOF before a whole response"
            head, found, body = data.partition(b"\r\n\r\n")
            if found:
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
            gevent.sleep(0.01)
    size = len(head) + 4 + length
    taken = b""
    while len(taken) < size:
        taken += sock.recv(size - len(taken))
    return head, body[:length]


def test_keep_alive_requests_on_one_connection(site):
    s = site()
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=TIMEOUT)
    for path in ("/", "/server", "/"):
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        body = response.read()
    port = conn.sock.getsockname()[1]
    conn.request("GET", "/")
    conn.getresponse().read()
    assert conn.sock.getsockname()[1] == port  # still the first connection
    conn.close()
    assert [r[0] for r in s.host.requests] == ["GET / HTTP/1.1", "GET /server HTTP/1.1"] + [
        "GET / HTTP/1.1"
    ] * 2
    assert body == b"hello"


def test_server_name_and_port_are_the_bound_address(site):
    s = site()
    with s.client() as sock:
        sock.sendall(b"GET /server HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock)[1] == f"127.0.0.1:{s.port}".encode()


def test_chunked_request_body(site):
    s = site()
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=TIMEOUT)
    conn.request("POST", "/echo", body=iter([b"abc", b"", b"defg"]), encode_chunked=True)
    assert conn.getresponse().read() == b"abcdefg"
    conn.request("POST", "/echo", body=b"xyz")  # the same connection goes on
    assert conn.getresponse().read() == b"xyz"
    conn.close()


def test_connection_close_is_echoed_then_eof(site):
    s = site()
    with s.client() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answer = read_to_eof(sock)
    assert b"\r\nConnection: close\r\n" in answer
    assert answer.endswith(b"hello")
    assert len(s.host.closed_sockets) == 1  # the worker hears it is done with it


def test_http_1_0_without_keep_alive_closes(site):
    s = site()
    with s.client() as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        answer = read_to_eof(sock)
    assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer


def test_no_reset_when_closing_with_unread_bytes(site):
    # The client's bytes after a Connection: close request are never read
    # by pywsgi: a plain close() with them unread would send a reset, and
    # the client would lose the response.
    s = site()
    with s.client() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" + b"x" * 50000)
        answer = read_to_eof(sock)  # a reset raises ConnectionResetError here
    assert answer.endswith(b"hello")


def test_head_is_served_before_the_socket(site):
    s = site(head=b"GET /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nab")
    with s.client() as sock:
        sock.sendall(b"cdef" + GET)
        assert read_response(sock)[1] == b"abcdef"
        assert read_response(sock)[1] == b"hello"
    assert [r[1] for r in s.host.requests] == [200, 200]


def test_idle_connection_is_handed_back_and_served_again(site):
    s = site(idle_return=0.2)
    with s.client() as sock:
        sock.sendall(GET)
        read_response(sock)
        net_socket, head = take_one(s.host.handed, "hand-back")
        assert head == b""
        sock.settimeout(0.1)
        with pytest.raises(socket.timeout):  # no EOF: the connection stays open
            sock.recv(1)
        sock.settimeout(TIMEOUT)
        s.serve(net_socket, head)  # the next worker
        sock.sendall(GET)
        assert read_response(sock)[1] == b"hello"


def test_retiring_hands_idle_connections_back_at_once(site):
    s = site(idle_return=0)  # never idle: only the retirement hands it back
    with s.client() as sock:
        sock.sendall(GET)
        read_response(sock)
        wait_until(lambda: s.host.idle, "the connection to wait between requests")
        s.host.leave(wsgi.RETIRE)
        net_socket, head = take_one(s.host.handed, "hand-back")
        assert head == b""
        net_socket.destroy()


def test_busy_connection_goes_back_after_its_response_with_the_bytes_read(site):
    s = site()
    second = b"GET /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nab"
    with s.client() as sock:
        # The second request (part of it) arrives with the first: pywsgi's
        # buffer holds it when the first is answered.
        sock.sendall(b"GET /sleep?0.3 HTTP/1.1\r\nHost: t\r\n\r\n" + second)
        gevent.sleep(0.1)
        s.host.leave(wsgi.RETIRE)
        assert read_response(sock)[1] == b"slept"
        net_socket, head = take_one(s.host.handed, "hand-back")
        assert head == second
        s.host.leaving = None
        s.serve(net_socket, head)
        sock.sendall(b"c")
        assert read_response(sock)[1] == b"abc"


def test_stop_closes_an_idle_connection_cleanly(site):
    s = site()
    with s.client() as sock:
        sock.sendall(GET)
        read_response(sock)
        wait_until(lambda: s.host.idle, "the connection to wait between requests")
        s.host.leave(wsgi.STOP)
        assert read_to_eof(sock) == b""
    assert s.host.handed.empty()


def test_stop_answers_a_busy_request_with_connection_close(site):
    s = site()
    with s.client() as sock:
        sock.sendall(b"GET /sleep?0.3 HTTP/1.1\r\nHost: t\r\n\r\n")
        gevent.sleep(0.1)
        s.host.leave(wsgi.STOP)
        answer = read_to_eof(sock)
    assert b"\r\nConnection: close\r\n" in answer and answer.endswith(b"slept")


def test_bad_request_gets_400_then_eof(site):
    s = site()
    with s.client() as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        answer = read_to_eof(sock)
    assert answer.startswith(b"HTTP/1.1 400") and b"Connection: close" in answer
    assert s.host.requests[-1][1] == 400


def test_application_error_is_logged_and_answered_500(site, caplog):
    s = site()
    with caplog.at_level(logging.ERROR, "geventfork.serve"):
        with s.client() as sock:
            sock.sendall(b"GET /raise HTTP/1.1\r\nHost: t\r\n\r\n")
            answer = read_to_eof(sock)
    assert answer.startswith(b"HTTP/1.1 500") and b"Connection: close" in answer
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage() == "Error handling request GET /raise HTTP/1.1"
    assert "the app failed on purpose" in str(record.exc_info[1])


def test_wsgi_errors_go_to_the_log(site, caplog):
    s = site()
    with caplog.at_level(logging.ERROR, "geventfork.serve"):
        with s.client() as sock:
            sock.sendall(b"GET /errors HTTP/1.1\r\nHost: t\r\n\r\n")
            read_response(sock)
    assert "a line for wsgi.errors" in [r.getMessage() for r in caplog.records]


def test_client_eof_between_requests_ends_the_connection(site):
    s = site()
    sock = s.client()
    sock.sendall(GET)
    read_response(sock)
    sock.shutdown(socket.SHUT_WR)
    assert read_to_eof(sock) == b""  # the server's FIN follows ours at once
    sock.close()
    deadline = time.monotonic() + TIMEOUT
    gevent.joinall(s.greenlets, timeout=deadline - time.monotonic())
    assert all(g.dead for g in s.greenlets)


def test_unix_socket_connection(site):
    s = site()
    ours, theirs = _socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    s.serve(net.Socket(ours))
    with socket.socket(fileno=theirs.detach()) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendall(b"GET /server HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answer = read_to_eof(sock)
    assert answer.endswith(b"\r\n\r\n:")  # SERVER_NAME and SERVER_PORT: "" for an unnamed socket
    assert s.host.requests == [("GET /server HTTP/1.1", 200, 1)]
