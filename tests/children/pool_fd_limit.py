"""A pool worker of which exactly one, in a pool, cannot take a single fd more.

The first worker to create the file named by its first argument lowers its
own RLIMIT_NOFILE to the fds it has open, so the kernel drops any fd sent to
it (MSG_CTRUNC) and its channel NACKs the handle. Messages: "who": reply
``["who", pid, limited]``; "socket" + a net.Socket: ``end(b"<pid>\\n")``.
"""

import os
import resource
import sys

from geventfork import process

try:
    os.close(os.open(sys.argv[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    limited = True
except FileExistsError:
    limited = False


@process.on("message")
def on_message(message, socket):
    if socket is not None:
        socket.end(f"{os.getpid()}\n".encode())
    elif message == "who":
        process.send(["who", os.getpid(), limited])


if limited:
    lowest_free = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest_free)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
