"""Sends the parent a handle: the child -> parent direction of a hand-off.

Messages:
    {"make": KIND}: make a handle of KIND (see ``handle_kinds.make``),
        reporting ``{"address": ...}`` when a client may connect; send it as
        "handle"; once ``send``'s callback ran, reply ``{"sent": ERROR_NAME
        or None, "open": whether our copy is still open}``.  A server is
        closed here after that, so that only the parent answers.
    {"invalid": True}: try to send an object that is no handle; reply
        ``{"raised": CLASS_NAME, "code": ERR_CODE}``.
"""

import handle_kinds as kinds

from geventfork import process


def hand_over(kind):
    handle = kinds.make(kind, lambda address: process.send({"address": address}))

    def sent(err):
        process.send({"sent": type(err).__name__ if err else None, "open": kinds.is_open(handle)})
        if kind == "net.Server":
            handle.close()

    process.send("handle", handle, callback=sent)


@process.on("message")
def on_message(message, handle):
    if "make" in message:
        hand_over(message["make"])
    elif "invalid" in message:
        try:
            process.send("handle", object())
        except Exception as exc:
            process.send({"raised": type(exc).__name__, "code": getattr(exc, "code", None)})
