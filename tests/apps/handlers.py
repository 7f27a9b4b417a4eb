"""Handler targets for the ``geventfork serve`` tests: each answers ``PID LINE``."""

import os
import socketserver


class LineHandler(socketserver.StreamRequestHandler):
    """A socketserver handler: ``PID LINE`` for each line, until the client closes."""

    def handle(self):
        for line in self.rfile:
            self.wfile.write(f"{os.getpid()} ".encode() + line)


def handle(sock, address):
    """A plain ``handle(socket, address)``: ``PID LINE`` for each line."""
    with sock.makefile("rwb") as stream:
        for line in stream:
            stream.write(f"{os.getpid()} ".encode() + line)
            stream.flush()
