"""The Flask app both servers run in ``serve.py``: ``/`` answers at once, ``/slow`` after 50 ms.

Both servers monkey-patch before they import it, so ``time.sleep`` yields to
the other connections of the worker (looked up at call time, so the patched
one is used whichever way the server imports this module).
"""

from __future__ import annotations

import time

from flask import Flask

app = Flask(__name__)

#: Seconds ``/slow`` sleeps: a call to a database or another service.
SLOW = 0.05


@app.route("/")
def hello() -> str:
    """A small answer: the cost measured is the server's own."""
    return "Hello, World!\n"


@app.route("/slow")
def slow() -> str:
    """An answer that waits for I/O first: how many requests a worker keeps in flight."""
    time.sleep(SLOW)
    return "Hello, slowly!\n"
