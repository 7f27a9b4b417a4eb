"""A pool worker for reloads, resizes, retirement and the heartbeat.

Messages: "pid": reply ``["pid", pid]``; "seen": reply ``["seen", N]``, the
messages its 'message' listener got so far; "retire": ``_worker.retire()``,
reply ``["retiring", pid]``, and disconnect 0.3 s later; "block": reply
``["blocking", pid]``, then block the whole process (no greenlet runs again).
"linger": stay up 2 s after the channel closes.
With the argument "custom", a retirement the pool asks for replies
``["asked to retire", pid]`` and disconnects 0.2 s later.
"""

import os
import sys

import gevent
from gevent import monkey

from geventfork import _worker, process

_sleep = monkey.get_original("time", "sleep")
seen = []


@process.on("message")
def on_message(message, socket):
    seen.append(message)
    if message == "pid":
        process.send(["pid", os.getpid()])
    elif message == "seen":
        process.send(["seen", len(seen)])
    elif message == "retire":
        _worker.retire()
        process.send(["retiring", os.getpid()])
        gevent.spawn_later(0.3, process.disconnect)
    elif message == "linger":  # stay up 2 s after the channel closes
        process.on("disconnect", lambda: gevent.spawn(gevent.sleep, 2))
    elif message == "block":
        process.send(["blocking", os.getpid()], callback=lambda err: _sleep(3600))


def asked_to_retire():
    process.send(["asked to retire", os.getpid()])
    gevent.spawn_later(0.2, process.disconnect)


if "custom" in sys.argv[1:]:
    _worker.on_retire(asked_to_retire)
