"""A pool worker that reads one request line per socket, then answers it.

Requests: b"slow": write b"working\n", then b"done\n" half a second later
and end; b"slowclose": the same, but only close the gevent socket at the
end; b"hang": write b"working\n", then never answer; anything else:
b"done\n" at once.  Messages without a socket: "stall" + a socket: keep it,
untouched, and reply ``["stalled", pid]``; anything else: echo it back with this worker's pid.
"""

import os

import gevent

from geventfork import process

stalled = []


def serve(conn):
    request = conn.socket.recv(64).strip()
    if request in (b"slow", b"slowclose", b"hang"):
        conn.write(b"working\n")
        gevent.sleep(3600 if request == b"hang" else 0.5)
    if request == b"slowclose":  # only close, as gevent.pywsgi does: no FIN of ours
        conn.socket.sendall(b"done\n")
        conn.socket.close()
    else:
        conn.end(b"done\n")


@process.on("message")
def on_message(message, socket):
    if message == "stall":
        stalled.append(socket)
        process.send(["stalled", os.getpid()])
    elif socket is not None:
        serve(socket)
    else:
        process.send([message, os.getpid()])
