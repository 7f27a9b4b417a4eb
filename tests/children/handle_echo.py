"""Receives handles from the parent and serves them as b"child".

Messages:
    "handle" + a handle: reply ``{"got": describe(handle)}``, then serve it
        (see ``handle_kinds.serve``).
    "watch" + a net.Socket: read it, reporting ``{"read": n}`` per chunk and
        ``{"closed": had_error}`` at the end; no ``'error'`` listener, on
        purpose (a client reset must not take this worker down).
    "close-servers": close every server received; reply "servers-closed".
    anything else: reply ``{"echo": message}``.
"""

import handle_kinds as kinds

from geventfork import process

servers = []


def watch(conn):
    conn.on("data", lambda data: process.send({"read": len(data)}))
    conn.on("close", lambda had_error: process.send({"closed": had_error}))
    conn.resume()


@process.on("message")
def on_message(message, handle):
    if message == "handle":
        process.send({"got": kinds.describe(handle)})
        if kinds.describe(handle)["class"] == "net.Server":
            servers.append(handle)
        kinds.serve(handle, b"child")
    elif message == "watch":
        watch(handle)
    elif message == "close-servers":
        for server in servers:
            server.close()
        process.send("servers-closed")
    else:
        process.send({"echo": message})
