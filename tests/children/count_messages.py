"""Count messages; on 'disconnect', exit with the count as the status.

The message "disconnect" makes the child disconnect itself.
"""

import sys

from geventfork import process

received = 0


@process.on("message")
def on_message(message, handle):
    global received
    received += 1
    if message == "disconnect":
        process.disconnect()


process.on("disconnect", lambda: sys.exit(received))
