"""A pool worker that can be told to stop reading its channel.

Messages: "block": reply ``["blocking", pid]``, then, once that reply is
written, block the whole process (no greenlet runs again, so nothing more is
read from the channel, and nothing is acknowledged); anything else: reply
``[message, pid]``.
"""

import os

from gevent import monkey

from geventfork import process

_sleep = monkey.get_original("time", "sleep")


@process.on("message")
def on_message(message, socket):
    if message == "block":
        process.send(["blocking", os.getpid()], callback=lambda err: _sleep(3600))
    else:
        process.send([message, os.getpid()])
