"""``geventfork.serve.wsgi.Handler``'s writes: a response's head goes out with
its body's first bytes in one ``send`` (pywsgi sends them apart), every
kind of body still arrives whole, and the ``Date`` header (cached a second)
says now.

Real TCP connections, served in-process by ``wsgi.Connection``; the
handler's gevent socket is wrapped to count the sends it is asked for.
"""

import email.utils
import http.client
import logging
import time

import gevent
import pytest

from geventfork import net
from geventfork.serve import wsgi
from helpers import TIMEOUT

LARGE = wsgi.COALESCE_LIMIT + 1


def app(environ, start_response):
    """``/size?N``: N bytes with a Content-Length; ``/chunks``: three pieces,
    no length (chunked); ``/write``: through ``write()``; ``/dated``: a
    ``Date`` of its own; anything else: 204, no body."""
    path, query = environ["PATH_INFO"], environ["QUERY_STRING"]
    if path == "/size":
        body = b"x" * int(query)
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    if path == "/chunks":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"one ", b"two ", b"three"])
    if path == "/dated":
        start_response(
            "200 OK", [("Content-Length", "0"), ("Date", "Thu, 01 Jan 1970 00:00:00 GMT")]
        )
        return [b""]
    if path == "/write":
        write = start_response("200 OK", [("Content-Length", "10")])
        write(b"01234")
        return [b"56789"]
    start_response("204 No Content", [])
    return []


class CountingSocket:
    """A connection's gevent socket that counts ``send`` and ``sendall`` calls."""

    def __init__(self, sock, counts):
        self._sock = sock
        self._counts = counts

    def send(self, data, *args):
        self._counts.append(len(data))
        return self._sock.send(data, *args)

    def sendall(self, data, *args):
        self._counts.append(len(data))
        return self._sock.sendall(data, *args)

    def __getattr__(self, name):
        return getattr(self._sock, name)


class Host:
    """The worker, as a ``Connection`` sees it: records each answer's body length."""

    idle_return = 0.0
    leaving = None

    def __init__(self):
        self.lengths = []

    def waiting(self, connection, idle):
        pass

    def requested(self, handler):
        self.lengths.append(handler.body_length)

    def hand_back(self, net_socket, head):  # pragma: no cover - idle_return is 0
        net_socket.destroy()

    def closed(self, net_socket):
        pass


@pytest.fixture
def served():
    """``(port, host, sends)``: a listener whose connections are served here;
    ``sends`` gets the size of every send a handler asks for."""
    host = Host()
    sends = []
    server = wsgi.make_server(app, logging.getLogger("geventfork.serve"))
    greenlets = []

    def serve(net_socket):
        connection = wsgi.Connection(server, host, net_socket, b"")
        handler = connection.handler
        handler.socket = CountingSocket(handler.socket, sends)
        greenlets.append(gevent.spawn(connection.serve))

    listener = net.create_server(serve, pause_on_connect=True)
    listener.listen(0, "127.0.0.1")
    yield listener.address()["port"], host, sends
    listener.close()
    gevent.joinall(greenlets, timeout=TIMEOUT)


def get(port, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        if headers is not None:
            headers.extend(response.getheaders())
        return response.status, response.read()
    finally:
        conn.close()


def test_small_response_goes_out_in_one_send(served):
    port, host, sends = served
    assert get(port, "/size?100") == (200, b"x" * 100)
    assert len(sends) == 1 and sends[0] > 100  # head and body together
    assert host.lengths == [100]


def test_body_past_the_limit_goes_after_the_head(served):
    port, host, sends = served
    assert get(port, f"/size?{LARGE}") == (200, b"x" * LARGE)
    assert len(sends) == 2 and sends[1] == LARGE
    assert host.lengths == [LARGE]


def test_empty_body_sends_the_head(served):
    port, host, sends = served
    assert get(port, "/empty") == (204, b"")
    assert len(sends) == 1
    assert host.lengths == [0]


def test_chunked_body_arrives_whole(served):
    port, host, sends = served
    assert get(port, "/chunks") == (200, b"one two three")
    # The head with the first chunk; then each chunk; then the last chunk.
    assert len(sends) == 4
    assert host.lengths == [13]


def test_write_callable_then_iterable(served):
    port, host, sends = served
    assert get(port, "/write") == (200, b"0123456789")
    assert len(sends) == 2
    assert host.lengths == [10]


def test_keep_alive_responses_each_in_one_send(served):
    port, host, sends = served
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        for size in (1, 10, 1000):
            conn.request("GET", f"/size?{size}")
            response = conn.getresponse()
            assert response.read() == b"x" * size
    finally:
        conn.close()
    assert len(sends) == 3
    assert host.lengths == [1, 10, 1000]


def test_date_header_is_now(served):
    port, _host, _sends = served
    headers = []
    before = time.time()
    assert get(port, "/size?1", headers) == (200, b"x")
    dates = [value for name, value in headers if name.lower() == "date"]
    assert len(dates) == 1
    date = email.utils.parsedate_to_datetime(dates[0]).timestamp()
    assert int(before) <= date <= time.time()
    assert dates[0].endswith(" GMT")


def test_date_header_of_the_application_is_kept(served):
    port, _host, _sends = served
    headers = []
    assert get(port, "/dated", headers) == (200, b"")
    dates = [value for name, value in headers if name.lower() == "date"]
    assert dates == ["Thu, 01 Jan 1970 00:00:00 GMT"]
