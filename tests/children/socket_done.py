"""Serves each net.Socket it is sent in the way the message names, then is done with it.

Messages (each with a net.Socket):
    "close": write b"bye" on its gevent socket, then close that (as
        gevent.pywsgi does).
    "wsgi": serve one request with gevent.pywsgi.
    "ignore": drop it (the garbage collector finishes it).
    "end": ``end(b"bye")``.
Says "ready" once listening; replies "served" after each.
"""

from gevent.pywsgi import WSGIServer

from geventfork import process


def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


@process.on("message")
def on_message(message, conn):
    if message == "close":
        conn.socket.sendall(b"bye")
        conn.socket.close()
    elif message == "wsgi":
        WSGIServer(("127.0.0.1", 0), app, log=None).handle(conn.socket, ("127.0.0.1", 0))
    elif message == "end":
        conn.end(b"bye")
    process.send("served")


process.send("ready")
