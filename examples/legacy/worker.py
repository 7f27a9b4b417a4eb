"""The legacy example's worker: runs the blocking handler on each socket it is sent.

Each socket arrives as a paused ``net.Socket``; nothing has read it yet, so
the client's request is all there. The handler is given the gevent socket
underneath (``socket.socket``) and the client's address, exactly as a
``socketserver`` server would call it, in the greenlet geventfork runs each
``'message'`` handler in: one slow client never holds up the others.
"""

import logging

from handler import HelloHandler

from geventfork import process

HelloHandler.server_name = process.argv[2] if len(process.argv) > 2 else "worker"
log = logging.getLogger("legacy.worker")


@process.on("message")
def on_message(message, socket):
    if message != "socket" or socket is None:
        return
    try:
        HelloHandler(socket.socket, (socket.remote_address, socket.remote_port), None)
    except OSError as exc:  # the client went away: that client's problem only
        log.warning("client %s:%s: %r", socket.remote_address, socket.remote_port, exc)
    finally:
        socket.end()  # graceful: flushes, sends FIN, drains what is left unread
