"""A pool worker that answers every socket with a fixed reply, unread, and ends it.

Messages: "socket" + a net.Socket: ``end(REPLY)``; "pid": reply with its pid;
anything else: echo it back.
"""
import os

from geventfork import process

REPLY = b"served by the pool\n"


@process.on("message")
def on_message(message, socket):
    if socket is not None:
        socket.end(REPLY)
    elif message == "pid":
        process.send(os.getpid())
    else:
        process.send(message)
