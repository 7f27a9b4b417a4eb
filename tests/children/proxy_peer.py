"""Reply, for each socket received, who the client is and what it sent first.

Replies ``[remote_address, remote_port, first bytes read (latin-1)]``, then
ends the socket with b"bye\\n".
"""

from geventfork import process


@process.on("message")
def on_message(message, sock):
    data = sock.socket.recv(100)
    process.send([sock.remote_address, sock.remote_port, data.decode("latin-1")])
    sock.end(b"bye\n")
