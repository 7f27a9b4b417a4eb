"""The server measured by ``benchmarks/pool_kept_copies.py``.

Usage: python -m geventfork server.py SYSTEM MESSAGE WORKERS COUNT

Accepts connections on 127.0.0.1 (port 0) and sends each to ``worker.py``
with MESSAGE ("hold" or "close"): through a ``Pool`` of WORKERS workers
(SYSTEM "pool"), or to one child of plain ``fork()`` (SYSTEM "fork").
Prints ``{"port": PORT}`` once listening, and ``{"acknowledged": COUNT}``
once COUNT connections were acknowledged by the workers.
"""

import json
import os
import sys

from geventfork import Pool, fork, net

system, message, workers, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
here = os.path.dirname(os.path.abspath(__file__))
worker = os.path.join(here, "worker.py")
target = Pool(worker, workers) if system == "pool" else fork(worker)
acknowledged = 0


def on_ack(err):
    global acknowledged
    if err is None:
        acknowledged += 1
        if acknowledged == count:
            print(json.dumps({"acknowledged": count}), flush=True)


server = net.create_server(
    lambda conn: target.send(message, conn, callback=on_ack), pause_on_connect=True
)
server.listen(0, "127.0.0.1", backlog=4096)
print(json.dumps({"port": server.address()["port"]}), flush=True)
