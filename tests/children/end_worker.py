"""A priority-style worker: answers each socket it is sent with ``socket.end()``.

Each message is ``{"reply": size}`` with a paused ``net.Socket``; the answer
is ``b"answer\\n"`` and ``size`` filler bytes, and the request is never read.
There is no ``'error'`` listener, on purpose: a client that resets must not
take this worker down.
"""

from geventfork import process


@process.on("message")
def on_message(message, socket):
    if socket:
        socket.end(b"answer\n" + b"." * message["reply"])
