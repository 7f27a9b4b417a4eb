"""A server with few fds: it keeps each connection 0.2 s, then answers b"hi".

Reports its port on stdout, as ``PORT\\n``; the parent connects more clients
than the fd limit allows at once.
"""

import resource
import sys

import gevent

from geventfork import net

server = net.create_server()
server.listen(0, "127.0.0.1")


@server.on("connection")
def on_connection(conn):
    gevent.sleep(0.2)
    conn.end(b"hi")


used = len(__import__("os").listdir("/proc/self/fd"))
resource.setrlimit(
    resource.RLIMIT_NOFILE, (used + 3, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
)
sys.stdout.write(f"{server.address()['port']}\n")
sys.stdout.flush()
