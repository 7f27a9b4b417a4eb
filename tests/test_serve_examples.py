"""The apps in ``examples/serve/`` do what their docstrings say.

Each is served here by gevent's own server on 127.0.0.1 port 0 and driven by
a real client; ``geventfork serve`` itself is tested end to end elsewhere.
"""

import http.client
import importlib.util
import os
import socket
import socketserver

import pytest
from gevent.pywsgi import WSGIServer
from gevent.server import StreamServer

from helpers import TIMEOUT

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def example(name):
    """Import ``examples/serve/NAME.py`` under a name of its own."""
    path = os.path.join(EXAMPLES, "serve", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"serve_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def server():
    """``server(server_object)``: start it; stopped at the end of the test."""
    started = []

    def start(srv):
        srv.start()
        started.append(srv)
        return srv.server_port

    yield start
    for srv in started:
        srv.stop(timeout=TIMEOUT)


def request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("name, factory", [("wsgi_app", "create_app"), ("flask_app", "create_app")])
def test_wsgi_examples_routes(server, name, factory):
    if name == "flask_app":
        pytest.importorskip("flask")
    app = getattr(example(name), factory)()
    port = server(WSGIServer(("127.0.0.1", 0), app, log=None))
    assert request(port, "GET", "/") == (200, b"Hello, World!\n")
    assert request(port, "GET", "/slow") == (200, b"slow\n")
    assert request(port, "GET", "/pid") == (200, f"{os.getpid()}\n".encode())
    assert request(port, "POST", "/echo", body=b"x" * 100_000) == (200, b"x" * 100_000)
    chunks = iter([b"chunk one, ", b"chunk two"])  # http.client sends it chunked
    assert request(port, "POST", "/echo", body=chunks) == (200, b"chunk one, chunk two")
    assert request(port, "GET", "/nope")[0] == 404


def test_socketserver_example_answers_lines_upper_cased(server):
    handler = example("socketserver_app").UpperHandler
    assert issubclass(handler, socketserver.BaseRequestHandler)
    port = server(StreamServer(("127.0.0.1", 0), lambda s, a: handler(s, a, None)))
    assert talk(port, b"hello\nworld\n") == b"HELLO\nWORLD\n"


def test_handler_example_echoes(server):
    port = server(StreamServer(("127.0.0.1", 0), example("handler_app").handle))
    assert talk(port, b"hello\n" * 1000) == b"hello\n" * 1000


def talk(port, data):
    """Send ``data``, shut down our side, read to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received
