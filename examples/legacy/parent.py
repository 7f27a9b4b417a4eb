"""A legacy app served by two forked workers from sockets the parent accepts.

Usage: python -m geventfork examples/legacy/parent.py [PORT]

The parent accepts on 127.0.0.1:PORT (default 8080; 0 picks a free port) and
hands each connection, unread (``pause_on_connect``), to the next of two
workers in turn. The workers run ``handler.HelloHandler``, a plain
``socketserver.StreamRequestHandler`` written with blocking calls and no
knowledge of gevent. If a worker has died, its connections go to the other
one: a socket whose hand-off failed is still the parent's, unread.

Try it: ``curl http://127.0.0.1:8080/`` a few times.
"""

import itertools
import os
import sys

from geventfork import fork, net

here = os.path.dirname(os.path.abspath(__file__))
port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
WORKERS = 2

workers = [fork(os.path.join(here, "worker.py"), [f"worker-{n}"]) for n in range(1, WORKERS + 1)]
turns = itertools.cycle(workers)
server = net.create_server(pause_on_connect=True)


def hand_off(socket, tries=WORKERS):
    def sent(err):
        if err is None:
            return
        if tries > 1:
            hand_off(socket, tries - 1)  # that worker is gone: try the next
        else:
            socket.destroy()

    next(turns).send("socket", socket, callback=sent)


server.on("connection", hand_off)
server.listen(
    port,
    "127.0.0.1",
    callback=lambda: print("listening on {address}:{port}".format(**server.address()), flush=True),
)
