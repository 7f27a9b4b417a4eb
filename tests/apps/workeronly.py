"""An app that loads in the parent's check but not in a worker (as one that
needs something only the parent's machine or environment has)."""

import sys

if sys.argv[0].endswith("worker.py"):  # geventfork.serve.worker runs as __main__
    raise RuntimeError("no database in the workers")


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"unreachable"]
