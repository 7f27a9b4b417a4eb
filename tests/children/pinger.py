"""Plain Python (no gevent): ping PORT COUNT times, print the round trips as JSON.

Usage: pinger.py PORT COUNT. Each ping is one byte, answered by one byte;
prints ``{"p50": ms, "p99": ms, "max": ms}``.
"""

import json
import socket
import sys
import time

port, count = int(sys.argv[1]), int(sys.argv[2])
times = []
with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(count):
        start = time.perf_counter()
        sock.sendall(b"p")
        if sock.recv(1) != b"p":
            sys.exit("the server closed")
        times.append((time.perf_counter() - start) * 1000)
        time.sleep(0.002)
times.sort()
print(
    json.dumps(
        {"p50": times[len(times) // 2], "p99": times[int(len(times) * 0.99)], "max": times[-1]}
    )
)
