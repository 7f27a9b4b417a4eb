"""A serve worker that has retired already: every connection it is sent goes
straight back to the parent (``{"op": "idle", "head": HEAD}``), then it
disconnects. The settings are argv[1] (``WorkerSettings`` JSON)."""

import sys

from geventfork.serve import worker, wsgi
from geventfork.serve.settings import WorkerSettings

import serve_apps

settings = WorkerSettings.from_json(sys.argv[1])
this = worker.Worker(settings, "wsgi", serve_apps.app, None)
this.start()
this.leaving = wsgi.RETIRE  # as retire() leaves it, without asking a pool
