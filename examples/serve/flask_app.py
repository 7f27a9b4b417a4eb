"""The routes of ``wsgi_app.py`` as a Flask application (for the benchmark).

geventfork serve examples/serve/flask_app.py:app --workers 2
gunicorn -k gevent -w 2 --chdir examples/serve flask_app:app
"""

from __future__ import annotations

import os
import time

from flask import Flask, request


def create_app() -> Flask:
    """A factory, as ``module:create_app()`` calls it."""
    app = Flask(__name__)

    @app.get("/")
    def hello() -> str:
        return "Hello, World!\n"

    @app.get("/slow")
    def slow() -> str:
        time.sleep(0.05)  # gevent.sleep, patched: other requests go on meanwhile
        return "slow\n"

    @app.get("/pid")
    def pid() -> str:
        return f"{os.getpid()}\n"

    @app.post("/echo")
    def echo() -> bytes:
        return request.get_data()

    return app


app = create_app()
