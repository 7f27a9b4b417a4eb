"""Targets for the serve worker's tests (``serve_apps:NAME``).

``app``: a WSGI app: ``/`` answers ``hello``; ``/pid`` the worker's pid;
``/echo`` the request body; ``/sleep?S`` after S seconds; ``/raise`` raises;
``/errors`` writes a line to ``wsgi.errors``.
"""

import os
import socketserver
import time
from http.server import SimpleHTTPRequestHandler


def app(environ, start_response):
    path = environ["PATH_INFO"]
    body = b"hello"
    if path == "/pid":
        body = str(os.getpid()).encode()
    elif path == "/echo":
        body = environ["wsgi.input"].read()
    elif path == "/sleep":
        time.sleep(float(environ["QUERY_STRING"] or "0.5"))
        body = b"slept"
    elif path == "/raise":
        raise RuntimeError("the app failed on purpose")
    elif path == "/errors":
        environ["wsgi.errors"].write("a line for wsgi.errors\n")
    elif path == "/server":
        body = f"{environ['SERVER_NAME']}:{environ['SERVER_PORT']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class Echo(socketserver.StreamRequestHandler):
    """One line in, the same line and the worker's pid out."""

    def handle(self):
        line = self.rfile.readline()
        self.wfile.write(line.rstrip(b"\n") + b" " + str(os.getpid()).encode() + b"\n")


class Files(SimpleHTTPRequestHandler):
    """http.server's file server, on the current directory."""

    def log_message(self, format, *args):  # quiet: the test reads stderr
        pass


def handle(sock, address):
    """A plain handler: echoes what it gets until EOF."""
    while True:
        data = sock.recv(65536)
        if not data:
            return
        sock.sendall(data)


def handle_raise(sock, address):
    """A plain handler that reads a line and raises."""
    sock.recv(100)
    raise ValueError("the handler failed on purpose")
