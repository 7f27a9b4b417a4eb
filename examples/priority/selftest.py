"""Self-test of the priority example: runs parent.py on a free port and checks it.

Usage: python -m geventfork examples/priority/selftest.py

Runs parent.py's code in this process (127.0.0.1, port 0, special address
127.0.0.2), connects 20 clients in turn, half from 127.0.0.1 (served by the
'normal' child) and half from 127.0.0.2 (the 'special' child), checks every
reply, prints a summary, and exits 0, or 1 on any failure. tox's ``run-module``
env runs it with the installed package.
"""

import os
import runpy
import socket
import sys

import gevent

here = os.path.dirname(os.path.abspath(__file__))
CLIENTS = 20
SPECIAL_ADDRESS = "127.0.0.2"
#: Seconds the whole test may take.
DEADLINE = 30


def ask(port, source):
    """Connect from ``source``, send a request, return the whole reply."""
    with socket.socket() as sock:
        sock.settimeout(5)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return reply
            reply += chunk


def check(port):
    """Run the clients; return how many got a wrong reply (or none)."""
    failures = 0
    for i in range(CLIENTS):
        priority, source = ("special", SPECIAL_ADDRESS) if i % 2 else ("normal", "127.0.0.1")
        expected = f"Request handled with {priority} priority".encode()
        try:
            reply = ask(port, source)
        except OSError as exc:
            reply = repr(exc).encode()
        if reply != expected:
            failures += 1
            print(f"client {i} ({source}): expected {expected!r}, got {reply!r}")
    return failures


def main():
    sys.argv = [os.path.join(here, "parent.py"), "0", SPECIAL_ADDRESS, "127.0.0.1"]
    example = runpy.run_path(sys.argv[0], run_name="priority_parent")
    server, children = example["server"], (example["normal"], example["special"])
    try:
        with gevent.Timeout(DEADLINE):
            failures = check(server.address()["port"])
    finally:
        server.close()
        for child in children:
            child.disconnect()  # the children exit once their channel closes
        for child in children:
            if child.wait(timeout=5) != 0:
                failures = CLIENTS
                print(f"child {child.pid} exited with {child.exit_code}, {child.signal_code}")
    print(
        f"priority example: {CLIENTS - failures} of {CLIENTS} clients served as expected "
        f"({CLIENTS // 2} normal, {CLIENTS // 2} special from {SPECIAL_ADDRESS})"
    )
    return 1 if failures else 0


sys.exit(main())
