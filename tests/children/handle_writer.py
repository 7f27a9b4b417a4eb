"""Write each message into the socket it carried, then close that socket."""

from geventfork import process


@process.on("message")
def on_message(message, handle):
    handle.sendall(message.encode())
    handle.close()
    process.send("written")
