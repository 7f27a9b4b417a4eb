"""``process.send()``'s rules from the child's side.

At once: sends with a bad ``callback`` or ``options`` (each must raise
TypeError), then one message listing what each raised. On ``'disconnect'``:
a send (which must raise ChannelClosedError); prints its message and exits
0 if it did, 1 if not.
"""

import sys

from geventfork import ChannelClosedError, process

raised = []
for bad in ({"callback": 5}, {"options": "keep_open"}):
    try:
        process.send("must not arrive", **bad)
        raised.append("nothing")
    except TypeError as exc:
        raised.append(f"TypeError: {exc}")
process.send(raised)


@process.on("disconnect")
def on_disconnect():
    try:
        process.send("too late")
    except ChannelClosedError as exc:
        print(exc, flush=True)
        sys.exit(0)
    sys.exit(1)
