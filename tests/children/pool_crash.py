"""A pool worker that fails at start-up while the file named by its first argument exists.

Failing, it writes three lines to stderr, the last ``crash <pid>``, and exits
with status 3. Once the file is gone it starts normally: "socket" + a
net.Socket: ``end(b"served\\n")``; anything else: reply ``[message, pid]``.
"""

import os
import sys

from geventfork import process

if os.path.exists(sys.argv[1]):
    sys.stderr.write("starting\nsomething went wrong\n")
    sys.stderr.write(f"crash {os.getpid()}\n")
    sys.exit(3)


@process.on("message")
def on_message(message, socket):
    if socket is not None:
        socket.end(b"served\n")
    else:
        process.send([message, os.getpid()])
