"""The floor: a bare gevent hand-off, straight on ``sendmsg`` with SCM_RIGHTS.

Usage: python parent.py [PORT] [SPECIAL_ADDRESS] [HOST]

What the stack (CPython, gevent's hub, the kernel) allows, with no framing,
no acknowledgment, no objects per connection and no API: one greenlet
accepts as gevent's ``StreamServer`` does (raw ``accept()``, up to 100 per
wake-up) and sends each accepted fd, as one byte plus SCM_RIGHTS, to one of
two children over a socketpair, routed by client address as in the priority
example (connections from SPECIAL_ADDRESS, default 74.125.127.100, go to the
'special' child, the rest to 'normal'). Prints "listening on HOST:PORT".
"""

import _socket
import os
import socket
import sys
from array import array

from gevent import get_hub, subprocess

#: Connections accepted per wake-up, as gevent's StreamServer (``max_accept``).
MAX_ACCEPT = 100
CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child.py")


def start_child(name):
    """Start a child named ``name``; return our (non-blocking) end of its socketpair."""
    ours, theirs = _socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    subprocess.Popen(
        [sys.executable, CHILD, name, str(theirs.fileno())], pass_fds=(theirs.fileno(),)
    )
    theirs.close()
    ours.setblocking(False)
    return ours


def send_fd(channel, fd):
    """Send one byte carrying ``fd``, waiting on the hub while the channel is full."""
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", [fd]))]
    while True:
        try:
            channel.sendmsg([b"s"], rights)
            return
        except BlockingIOError:
            get_hub().wait(get_hub().loop.io(channel.fileno(), 2))


def accept_loop(listener, normal, special, special_address):
    """Accept for ever, MAX_ACCEPT per wake-up; hand each connection over, close our copy."""
    hub = get_hub()
    readable = hub.loop.io(listener.fileno(), 1)
    while True:
        hub.wait(readable)
        for _ in range(MAX_ACCEPT):
            try:
                fd, (address, _port) = listener._accept()
            except BlockingIOError:
                break
            send_fd(special if address == special_address else normal, fd)
            os.close(fd)


def listen(host, port):
    """A non-blocking listening socket, as ``net.Server.listen`` makes one."""
    listener = _socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(511)
    listener.setblocking(False)
    return listener


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 1337
    special_address = sys.argv[2] if len(sys.argv) > 2 else "74.125.127.100"
    host = sys.argv[3] if len(sys.argv) > 3 else "0.0.0.0"
    normal, special = start_child("normal"), start_child("special")
    listener = listen(host, port)
    print("listening on {}:{}".format(*listener.getsockname()), flush=True)
    accept_loop(listener, normal, special, special_address)


main()
