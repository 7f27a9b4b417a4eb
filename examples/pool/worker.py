"""A worker of the pool example: answers each socket it is sent with its priority."""

from geventfork import process


@process.on("message")
def on_message(m, socket):
    if m == "socket":
        if socket:  # the client may have gone away in between
            socket.end(f"Request handled with {process.argv[2]} priority")
