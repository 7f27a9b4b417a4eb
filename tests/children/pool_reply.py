"""A pool worker that answers every socket with a fixed reply.

Messages: "socket" + a net.Socket: ``end(REPLY)``, the request unread;
"close" + a net.Socket: read the request, write REPLY and only close the
gevent socket (``conn.socket.close()``, as ``gevent.pywsgi`` does); "pid":
reply with its pid; anything else: echo it back.
"""

import os

from geventfork import process

REPLY = b"served by the pool\n"


@process.on("message")
def on_message(message, socket):
    if socket is None:
        process.send(os.getpid() if message == "pid" else message)
    elif message == "close":
        sock = socket.socket
        sock.recv(1024)
        sock.sendall(REPLY)
        sock.close()
    else:
        socket.end(REPLY)
