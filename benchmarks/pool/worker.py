"""The worker of ``server.py``: holds connections, or serves and closes them.

"hold" + a socket: wait for the client's first byte, as an idle keep-alive
connection waits for its next request (the clients never send one).
"close" + a socket: read the request, write a reply and only close the gevent
socket (``conn.socket.close()``), as ``gevent.pywsgi`` does.
"""

from geventfork import process

held = []


@process.on("message")
def on_message(message, socket):
    if message == "hold":
        held.append(socket)
        socket.on("data", lambda data: None)
    else:
        sock = socket.socket
        sock.recv(1024)
        sock.sendall(b"reply\n")
        sock.close()
