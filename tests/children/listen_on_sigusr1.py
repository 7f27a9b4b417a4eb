"""Listen for nothing but 'disconnect'; on SIGUSR1 start echoing messages.

"ready" goes out as the top level returns: what arrives after it, before
SIGUSR1, finds no 'message' listener.
"""

import signal

import gevent

from geventfork import process


def listen():
    process.on("message", lambda message, handle: process.send(message))
    process.send("listening")


gevent.signal_handler(signal.SIGUSR1, listen)
process.on("disconnect", lambda: None)  # keeps the child alive while connected
process.send("ready")
