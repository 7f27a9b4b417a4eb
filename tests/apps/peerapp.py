"""A WSGI app for the PROXY protocol tests: every answer names the worker and the client.

``GET /`` -> ``PID REMOTE_ADDR REMOTE_PORT``: the worker's pid (which pool
served it, for routing) and the client's address as the worker sees it.
"""

import os


def app(environ, start_response):
    """Answer ``PID REMOTE_ADDR REMOTE_PORT``."""
    body = f"{os.getpid()} {environ.get('REMOTE_ADDR')} {environ.get('REMOTE_PORT')}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
