"""The worker of the priority example: answers each socket it is sent."""

from geventfork import process


@process.on("message")
def on_message(m, socket):
    if m == "socket":
        if socket:  # the client may have gone away in between
            socket.end(f"Request handled with {process.argv[2]} priority")
