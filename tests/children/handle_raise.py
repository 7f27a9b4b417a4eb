"""Its 'message' listener keeps the handle, then raises: the net.Socket must be ended.

Keeping it proves the end comes from the failed listener, not from the
garbage collector. Says "ready" once listening.
"""

from geventfork import process

kept = []


@process.on("message")
def on_message(message, handle):
    kept.append(handle)
    raise RuntimeError("message handler failed on purpose")


process.send("ready")
