"""A ``socketserver`` request handler, served as is by ``geventfork serve``.

    geventfork serve examples/serve/socketserver_app.py:UpperHandler --bind 127.0.0.1:9000
    printf 'hello\nworld\n' | nc -q1 127.0.0.1 9000      # HELLO, WORLD

Blocking code, as written for ``socketserver.ThreadingTCPServer``: each
connection gets a handler of its own in a greenlet of a patched worker.
"""

from __future__ import annotations

import socketserver


class UpperHandler(socketserver.StreamRequestHandler):
    """Answer each line with the line upper-cased, until the client closes."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line.upper())
