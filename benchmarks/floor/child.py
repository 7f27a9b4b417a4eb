"""The floor's child: receives fds over its socketpair and answers each.

Usage (by parent.py): python child.py NAME FD

For each fd: send the fixed reply, shut the write side down, then close once
the client has closed (or after LINGER seconds), reading and discarding
whatever it sent, so that unread request bytes never turn the close into a
reset. No greenlet per connection: the lingering close is two hub watchers.
Exits when the parent closes the socketpair.
"""

import _socket
import socket
import sys

from gevent import get_hub

#: Seconds to wait for the client's close before closing anyway.
LINGER = 2.0
#: Reads per wake-up before other callbacks get their turn (StreamServer's max_accept is 100).
BATCH = 64
_ANC_SIZE = socket.CMSG_SPACE(16 * 4)


def answer(fd, reply, loop):
    """Reply, half-close, and close after the peer does (or after LINGER)."""
    conn = _socket.socket(fileno=fd)
    try:
        conn.send(reply)  # a fresh socket's buffer always takes a short reply
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        conn.close()
        return
    linger(conn, loop)


def linger(conn, loop):
    """Close ``conn`` at EOF (discarding what it sent) or after LINGER."""
    readable, timer = loop.io(conn.fileno(), 1), loop.timer(LINGER)

    def close():
        readable.stop()
        timer.stop()
        conn.close()

    def on_readable():
        try:
            if conn.recv(4096, socket.MSG_DONTWAIT):
                return  # request bytes: discard, wait for EOF
        except BlockingIOError:
            return
        except OSError:
            pass
        close()

    readable.start(on_readable)
    timer.start(close)


def receive_fds(channel, hub):
    """Yield each fd the parent sends; return at EOF.

    At most BATCH reads per wake-up, then back to the hub: a loop that never
    yields never runs the lingering closes, and once the fd limit is reached
    the kernel drops the fds still arriving (MSG_CTRUNC).
    """
    readable = hub.loop.io(channel.fileno(), 1)
    while True:
        hub.wait(readable)
        for _ in range(BATCH):
            try:
                data, ancdata, flags, _ = channel.recvmsg(
                    4096, _ANC_SIZE, socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT
                )
            except BlockingIOError:
                break
            if flags & socket.MSG_CTRUNC:
                raise RuntimeError("fds were dropped (MSG_CTRUNC)")
            for level, kind, payload in ancdata:
                if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                    yield from memoryview(payload).cast("i")
            if not data:
                return


def main():
    name, fd = sys.argv[1], int(sys.argv[2])
    reply = f"Request handled with {name} priority".encode()
    hub = get_hub()
    channel = _socket.socket(fileno=fd)
    for conn_fd in receive_fds(channel, hub):
        answer(conn_fd, reply, hub.loop)


main()
