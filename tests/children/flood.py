"""Floods its parent with small messages for SECONDS seconds, then exits 0.

Usage: flood.py SECONDS. It yields only when its queue is past the
high-water mark, as a fast producer would.
"""

import sys
import time

import gevent

from geventfork import process

end = time.monotonic() + float(process.argv[2])
message = {"kind": "tick", "pad": "x" * 40}
while time.monotonic() < end:
    for _ in range(1000):
        if not process.send(message):
            gevent.sleep(0.001)
process.disconnect()
sys.exit(0)
