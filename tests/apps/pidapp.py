"""A WSGI app for the ``geventfork serve`` tests: every answer names the worker.

Routes (GET): ``/`` -> ``PID VERSION``; ``/sleep?S`` waits S seconds
(cooperatively) first; ``/exit`` ends the worker mid-request; ``/stuck`` blocks
the worker's event loop for 30 s (a non-cooperative call).
"""

import os

from gevent import monkey

#: Changed by the reload test, which serves a copy of this file.
VERSION = "v1"


def app(environ, start_response):
    """Answer ``PID VERSION PATH``."""
    path = environ.get("PATH_INFO", "/")
    if path == "/sleep":
        import time

        time.sleep(float(environ.get("QUERY_STRING") or "1"))
    elif path == "/exit":
        os._exit(3)
    elif path == "/stuck":
        monkey.get_original("time", "sleep")(30)
    body = f"{os.getpid()} {VERSION} {path}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def create_app():
    """A factory, as ``pidapp:create_app()`` calls it."""
    return app
