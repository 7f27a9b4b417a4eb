"""A child that takes its messages with ``recv()`` rather than a listener.

Modes (argv[1]):
- "echo": ``for message, handle in process.messages()``: reply
  ``["echo", message]``; a socket gets b"served\\n" and is ended. Exits
  when the channel closes.
- "late": send "ready", ``recv()`` one message, wait 0.5 s (messages
  arrive meanwhile), send "taking", then ``recv()`` one socket, end it with
  b"late\\n", send "taken".
- "burst N": send 0 .. N-1, then exit.
- "socket-then-exit PORT": connect to 127.0.0.1:PORT, send that socket to
  the parent with "here", report the callback's error, then exit.
"""

import socket
import sys

import gevent

from geventfork import net, process

mode = sys.argv[1]

if mode == "echo":
    for message, handle in process.messages():
        if handle is not None:
            handle.end(b"served\n")
        process.send(["echo", message])
elif mode == "late":
    process.send("ready")
    process.recv()
    gevent.sleep(0.5)
    process.send("taking")
    message, handle = process.recv()
    handle.end(b"late\n")
    process.send("taken")
elif mode == "burst":
    for n in range(int(sys.argv[2])):
        process.send(n)
elif mode == "socket-then-exit":
    gevent.sleep(0.5)  # after the parent's recv(timeout=0.1), however fast we started
    conn = net.Socket(socket.create_connection(("127.0.0.1", int(sys.argv[2]))))
    process.send("here", conn, callback=lambda err: sys.stderr.write(f"callback: {err!r}\n"))
    gevent.sleep(0.5)
    sys.exit(0)
