"""A legacy request handler: blocking ``socketserver`` code that knows no gevent.

Nothing here imports gevent or geventfork. It reads an HTTP request line and
its headers with ordinary blocking file calls and writes a small response,
as code written for ``socketserver.ThreadingTCPServer`` would. Under
``python -m geventfork`` those blocking calls are cooperative, because the
process is monkey-patched before this module is imported.
"""

import os
import socketserver


class HelloHandler(socketserver.StreamRequestHandler):
    """Answer one ``GET`` with ``hello from NAME``; NAME says which worker."""

    #: Set by the worker, so that responses show who served them.
    server_name = "legacy"

    def handle(self):
        request_line = self.rfile.readline(65537)
        while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass  # skip the headers
        if not request_line.startswith(b"GET "):
            self.respond(b"400 Bad Request", b"only GET\n")
            return
        body = f"hello from {self.server_name} (pid {os.getpid()})\n".encode()
        self.respond(b"200 OK", body)

    def respond(self, status, body):
        self.wfile.write(
            b"HTTP/1.0 " + status + b"\r\n"
            b"Content-Type: text/plain\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n"
            b"Connection: close\r\n\r\n" + body
        )
