"""The priority example with a Pool of workers on each side: no connection is lost.

Usage: python -m geventfork examples/pool/parent.py [PORT] [SPECIAL_ADDRESS] [HOST]

As ``examples/priority/parent.py`` (port 1337, special address
74.125.127.100 and host 0.0.0.0 by default; the address is printed once
listening), but each priority is served by a ``Pool``: two 'normal'
workers and one 'special'. Kill a worker (``kill -9 PID``) and its pool
restarts it; the connections it had not begun on go to another worker.

SIGTERM stops accepting, lets the workers finish the connections they have
(10 s at most), and exits.
"""

import os
import signal
import sys

import gevent

from geventfork import Pool, net

here = os.path.dirname(os.path.abspath(__file__))
port = int(sys.argv[1]) if len(sys.argv) > 1 else 1337
special_address = sys.argv[2] if len(sys.argv) > 2 else "74.125.127.100"
host = sys.argv[3] if len(sys.argv) > 3 else "0.0.0.0"

normal = Pool(os.path.join(here, "worker.py"), 2, ["normal"])
special = Pool(os.path.join(here, "worker.py"), 1, ["special"])
server = net.create_server(pause_on_connect=True)


@server.on("connection")
def on_connection(socket):
    if socket.remote_address == special_address:
        special.send("socket", socket)
    else:
        normal.send("socket", socket)


def shutdown():
    server.close()
    gevent.joinall([gevent.spawn(pool.close, 10) for pool in (normal, special)])


gevent.signal_handler(signal.SIGTERM, shutdown)
server.listen(
    port,
    host,
    callback=lambda: print("listening on {address}:{port}".format(**server.address()), flush=True),
)
