"""A 'message' handler that blocks on "block" until "release" arrives; echo the rest."""

from gevent.event import Event

from geventfork import process

released = Event()


@process.on("message")
def on_message(message, handle):
    if message == "block":
        released.wait()
        process.send("unblocked")
    elif message == "release":
        released.set()
    else:
        process.send(message)
