"""A worker in the blocking style: ``recv`` the request line, ``sendall`` the answer.

Each message is ``{"reply": size}`` with a ``net.Socket``, served through its
gevent socket (``Socket.socket``) with plain blocking calls: read up to the
first newline, answer ``b"answer\\n"`` and ``size`` filler bytes, close. A
client idle for ``argv[2]`` seconds is dropped, and a client's error ends its
own connection only, as in any blocking server.
"""

from geventfork import process

IDLE_TIMEOUT = float(process.argv[2])


def read_request(sock):
    """Read up to the first newline (or EOF), keeping nothing."""
    while True:
        chunk = sock.recv(64 * 1024)
        if not chunk or b"\n" in chunk:
            return


@process.on("message")
def on_message(message, conn):
    if conn is None:
        return
    sock = conn.socket
    sock.settimeout(IDLE_TIMEOUT)
    try:
        read_request(sock)
        sock.sendall(b"answer\n" + b"." * message["reply"])
    except OSError:
        pass  # reset, timed out or gone: that client's loss only
    finally:
        conn.destroy()
