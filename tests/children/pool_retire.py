"""A pool worker that retires, or just exits, when told to.

Messages: "retire": ``process.disconnect()`` (the process then exits with
status 0, nothing else keeping it alive); "exit": exit with status 0 at once,
without disconnecting; anything else: reply ``[message, pid]``.
"""

import os
import sys

from geventfork import process


@process.on("message")
def on_message(message, socket):
    if message == "retire":
        process.disconnect()
    elif message == "exit":
        sys.stdout.flush()
        os._exit(0)
    else:
        process.send([message, os.getpid()])
