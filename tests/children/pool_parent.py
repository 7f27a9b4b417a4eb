"""A parent serving connections through a Pool of ``pool_worker.py``; SIGTERM stops it.

Usage: pool_parent.py SIZE CLOSE_TIMEOUT

Prints one JSON line once listening: ``{"port", "workers": [pid, ...]}``.
On SIGTERM: closes the server, then ``pool.close(CLOSE_TIMEOUT)``, prints
``{"exits": [[pid, code, signal], ...]}`` and returns (the process exits 0).
"""

import json
import os
import signal
import sys

import gevent

from geventfork import Pool, net

here = os.path.dirname(os.path.abspath(__file__))
size, close_timeout = int(sys.argv[1]), float(sys.argv[2])
exits = []

pool = Pool(os.path.join(here, "pool_worker.py"), size, shutdown_timeout=close_timeout)
pool.on("exit", lambda worker, code, sig: exits.append([worker.pid, code, sig]))
server = net.create_server(lambda socket: pool.send("socket", socket), pause_on_connect=True)
server.listen(0, "127.0.0.1")


def stop():
    server.close()
    pool.close()
    print(json.dumps({"exits": exits}), flush=True)


gevent.signal_handler(signal.SIGTERM, stop)
print(
    json.dumps({"port": server.address()["port"], "workers": [w.pid for w in pool.workers]}),
    flush=True,
)
