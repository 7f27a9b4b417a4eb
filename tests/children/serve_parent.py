"""A small stand-in for ``geventfork serve``'s parent: one Pool of serve workers.

argv: SETTINGS_JSON [WORKERS [HEARTBEAT]]

Listens on 127.0.0.1:0 (pause_on_connect) and sends each connection to the
pool, ``{"op": "connection", "head": ""}``. A connection a worker hands back
(``{"op": "idle", "head": STR}``) is watched without reading; once readable
it goes to the pool again with its head (a client that closed it meanwhile
is ended). Prints one JSON object a line on stdout:

    {"port": N}                     listening
    {"spawn": PID}                  a worker started
    {"idle": HEAD, "pid": PID}      a worker handed a connection back
    {"exit": PID, "code": C}        a worker exited
    {"closed": true}                the pool closed (SIGTERM)

SIGUSR1: ``pool.reload()``. SIGTERM: stop accepting, ``pool.close(5)``, exit.
"""

import json
import signal
import socket as _socket
import sys

import gevent
from geventfork import Pool, net


def say(**fields):
    print(json.dumps(fields), flush=True)


settings = sys.argv[1]
size = int(sys.argv[2]) if len(sys.argv) > 2 else 1
pool = Pool("geventfork.serve.worker", size, [settings], shutdown_timeout=5)
pool.on("spawn", lambda worker: say(spawn=worker.pid))
pool.on("exit", lambda worker, code, sig: say(exit=worker.pid, code=code, signal=sig))
server = net.create_server(pause_on_connect=True)
held = set()  # connections handed back, watched until readable


@server.on("connection")
def on_connection(conn):
    pool.send({"op": "connection", "head": ""}, conn)


@pool.on("message")
def on_message(worker, message, handle):
    say(idle=message.get("head"), pid=worker.pid)
    if handle is not None:
        gevent.spawn(watch, handle, message.get("head", ""))


def watch(conn, head):
    held.add(conn)
    try:
        gevent.socket.wait_read(conn.socket.fileno())
        try:
            alive = conn.socket.recv(1, _socket.MSG_PEEK)
        except OSError:
            alive = b""
    finally:
        held.discard(conn)
    if alive or head:
        pool.send({"op": "connection", "head": head}, conn)
    else:
        conn.end()


def stop():
    server.close()
    for conn in list(held):
        conn.end()
    pool.close(5)
    say(closed=True)


gevent.signal_handler(signal.SIGUSR1, pool.reload)
gevent.signal_handler(signal.SIGTERM, stop)
server.listen(0, "127.0.0.1")
say(port=server.address()["port"])
