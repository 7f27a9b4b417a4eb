"""A WSGI application without a framework, for ``geventfork serve``.

    geventfork serve examples/serve/wsgi_app.py:app --workers 2
    geventfork serve 'examples/serve/wsgi_app.py:create_app()'

Routes: ``/`` says hello, ``/slow`` waits 50 ms in ``time.sleep`` (blocking
code: the worker is monkey-patched, so only this request waits), ``/echo``
answers a POST with its body, ``/pid`` names the worker's process id.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Iterable, List, Tuple

Environ = Dict[str, Any]
Headers = List[Tuple[str, str]]
StartResponse = Callable[[str, Headers], object]


def create_app() -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    """A factory, as ``module:create_app()`` calls it."""
    return application


def application(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Answer one request (PEP 3333)."""
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
    if path == "/" and method in ("GET", "HEAD"):
        return _reply(start_response, "200 OK", b"Hello, World!\n")
    if path == "/slow" and method in ("GET", "HEAD"):
        time.sleep(0.05)  # gevent.sleep, patched: other requests go on meanwhile
        return _reply(start_response, "200 OK", b"slow\n")
    if path == "/pid" and method in ("GET", "HEAD"):
        return _reply(start_response, "200 OK", f"{os.getpid()}\n".encode())
    if path == "/echo" and method == "POST":
        return _reply(start_response, "200 OK", _body(environ))
    if path in ("/", "/slow", "/pid", "/echo"):
        return _reply(start_response, "405 Method Not Allowed", b"method not allowed\n")
    return _reply(start_response, "404 Not Found", b"not found\n")


def _body(environ: Environ) -> bytes:
    """The request's body: Content-Length bytes, or all of a chunked body."""
    length = environ.get("CONTENT_LENGTH")
    stream = environ["wsgi.input"]
    body: bytes = stream.read(int(length)) if length else stream.read()
    return body


def _reply(start_response: StartResponse, status: str, body: bytes) -> List[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


app = application
