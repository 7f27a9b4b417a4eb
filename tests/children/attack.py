"""A child that misbehaves on its channel, by hand, to test its parent.

Usage: attack.py pickle MARKER | attack.py fds COUNT

``pickle``: one frame whose codec byte says pickle, holding a pickle that
would create MARKER if unpickled, on a JSON channel. ``fds``: a frame header
announcing a megabyte, then COUNT fds, 100 at a time, each batch sent with
the frame's middle bytes. Then it waits for the parent to close the channel
and exits 0.
"""

import os
import pickle
import socket
import struct
import sys
from array import array

from geventfork import process

HEADER = struct.Struct("!IBBBBHI")  # the wire format's header (see geventfork/_wire.py)
MESSAGE, PICKLE = 1, 2


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


fd = process.channel.fileno()
raw = socket.socket(fileno=os.dup(fd))
raw.setblocking(True)
if sys.argv[1] == "pickle":
    payload = pickle.dumps(Exploit(sys.argv[2]))
    raw.sendall(HEADER.pack(len(payload), MESSAGE, PICKLE, 0, 0, 0, 0) + payload)
else:
    raw.sendall(HEADER.pack(1 << 20, MESSAGE, 1, 0, 0, 0, 0) + b"[")
    spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(100)]
    for _ in range(int(sys.argv[2]) // 100):
        try:
            raw.sendmsg([b"1," * 10], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", spare))])
        except OSError:  # the parent closed the channel: what it was sent is closed
            break
process.channel.unref()
raw.settimeout(10)
try:
    while raw.recv(4096):
        pass
except OSError:
    pass
sys.exit(0)
