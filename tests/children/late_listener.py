"""Say "ready", keep the top level busy a while, only then listen (and echo)."""

import gevent

from geventfork import process

process.send("ready")
gevent.sleep(0.3)  # the parent's messages arrive meanwhile, with no listener
process.on("message", lambda message, handle: process.send(message))
