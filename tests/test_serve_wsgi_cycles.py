"""A served connection's objects go when it ends, without the garbage collector.

``wsgi.Connection`` and its pywsgi ``Handler`` refer to each other; left so,
the request, buffers and sockets of every connection would wait for a
collection (a few dozen objects per connection, and more collections).
"""

import gc
import logging
import socket
import weakref

import gevent

from geventfork import net
from geventfork.serve import wsgi
from helpers import TIMEOUT, read_to_eof


def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


class Host:
    """The worker, as a ``Connection`` sees it."""

    idle_return = 0.0
    leaving = None

    def waiting(self, connection, idle):
        pass

    def requested(self, handler):
        pass

    def hand_back(self, net_socket, head):  # pragma: no cover - idle_return is 0
        net_socket.destroy()

    def closed(self, net_socket):
        pass


def test_connection_and_handler_are_freed_by_reference_counting():
    server = wsgi.make_server(app, logging.getLogger("geventfork.serve"))
    host = Host()
    refs = []
    done = []

    def serve(net_socket):
        connection = wsgi.Connection(server, host, net_socket, b"")
        refs.extend([weakref.ref(connection), weakref.ref(connection.handler)])
        done.append(gevent.spawn(connection.serve))

    listener = net.create_server(serve, pause_on_connect=True)
    listener.listen(0, "127.0.0.1")
    gc.collect()
    gc.disable()
    try:
        client = socket.create_connection(("127.0.0.1", listener.address()["port"]), TIMEOUT)
        with client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert read_to_eof(client).endswith(b"\r\n\r\nok")
        gevent.joinall(done, timeout=TIMEOUT)
        assert done[0].successful()
        del done[:]
        gevent.sleep(0.05)  # the greenlet's last references go
        assert [ref() for ref in refs] == [None, None]
    finally:
        gc.enable()
        listener.close()
