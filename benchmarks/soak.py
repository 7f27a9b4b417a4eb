"""Soak: many hand-offs through the priority example, watching fds and memory.

Usage: python benchmarks/soak.py [--connections N] [--concurrency C] [--warmup W]

Starts ``examples/priority/parent.py`` (a parent with ``pause_on_connect``
handing each connection to one of two forked workers, which answer with
``end()``) under ``python -m geventfork`` on 127.0.0.1, port 0, in a session
of its own. Drives it with C concurrent gevent clients in this process, half
of them from 127.0.0.2 (the ``special`` worker's), each sending a request and
reading the answer to EOF. Prints the fd count and RSS of the parent and of
each worker after W warm-up connections and at the end (once the workers
have closed every client socket), connections per second, and each
connection not answered in full. Exits 1 if one was not, or if an fd count
did not come back. Asserts nothing else: figures move with the load of the
machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import time
from typing import NamedTuple, Optional

import gevent
from gevent import socket as gsocket
from gevent import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "priority", "parent.py")
SPECIAL_ADDRESS = "127.0.0.2"
#: Each client's source address and the answer it must get, in turn.
CLIENTS = (
    ("127.0.0.1", b"Request handled with normal priority"),
    (SPECIAL_ADDRESS, b"Request handled with special priority"),
)
REQUEST = b"GET / HTTP/1.0\r\nHost: soak\r\n\r\n"  # never read: end() must not reset
#: Seconds one connection may take, from connect() to EOF.
CLIENT_TIMEOUT = 10.0
#: Seconds the example gets to say where it listens, and to stop.
START_TIMEOUT = STOP_TIMEOUT = 10.0
#: Seconds the processes get to close every client socket after the load
#: (``end()`` lingers up to 2 s for a client that does not close).
SETTLE_TIMEOUT = 10.0


class Usage(NamedTuple):
    """One process's open fds and resident memory."""

    fds: int
    sockets: int
    rss_kib: int


class Result(NamedTuple):
    """What a soak run measured."""

    connections: int
    seconds: float
    failures: list  # (index, source, what went wrong)
    start: dict  # name -> Usage, after the warm-up
    end: dict  # name -> Usage, after the load
    settled: bool  # every process went back to its idle socket count

    @property
    def rate(self) -> float:
        return self.connections / self.seconds if self.seconds else 0.0


# -- the processes ----------------------------------------------------------------


def usage(pid: int) -> Usage:
    """The fds, sockets and RSS of process ``pid``, from /proc."""
    targets = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            targets.append(os.readlink(f"/proc/{pid}/fd/{name}"))
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return Usage(len(targets), sum(t.startswith("socket:") for t in targets), rss)


def children_of(pid: int) -> dict:
    """Map the last argument of each child of ``pid`` (the priority) to its pid."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().rstrip(b"\0").split(b"\0")  # a forked child pads it with NULs
        except OSError:  # exited meanwhile
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            found[argv[-1].decode()] = int(name)
    return found


class Example:
    """The priority example, running in a session of its own."""

    def __init__(self) -> None:
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": ROOT + (os.pathsep + path if path else "")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "geventfork", EXAMPLE, "0", SPECIAL_ADDRESS, "127.0.0.1"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            self.port = self._read_port()
            workers = self._workers()
            self.pids = {"parent": self.proc.pid, **{k: workers[k] for k in ("normal", "special")}}
        except BaseException:
            self.stop()
            raise

    def _workers(self) -> dict:
        """The children by name; a child forked from the fork server's
        template shows its own command line a moment after it exists."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            workers = children_of(self.proc.pid)
            if {"normal", "special"} <= set(workers) or time.monotonic() > deadline:
                return workers
            gevent.sleep(0.05)

    def _read_port(self) -> int:
        with gevent.Timeout(START_TIMEOUT, RuntimeError("the example never said where it listens")):
            line = self.proc.stdout.readline().decode()
        match = re.search(r"listening on [\d.]+:(\d+)", line)
        if not match:
            raise RuntimeError(f"the example said {line!r}")
        return int(match.group(1))

    def usage(self) -> dict:
        return {name: usage(pid) for name, pid in self.pids.items()}

    def settle(self, idle: dict) -> bool:
        """Wait until each process holds no more sockets than in ``idle``."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while time.monotonic() < deadline:
            if all(usage(pid).sockets <= idle[name].sockets for name, pid in self.pids.items()):
                return True
            gevent.sleep(0.05)
        return False

    def stop(self) -> None:
        """SIGTERM the whole session, wait for the parent, SIGKILL what is left."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_TIMEOUT)
        self.proc.stdout.close()


# -- the clients ------------------------------------------------------------------


def ask(port: int, source: str) -> bytes:
    """Connect from ``source``, send the request, return everything up to EOF."""
    sock = gsocket.socket()
    try:
        sock.settimeout(CLIENT_TIMEOUT)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(REQUEST)
        chunks = []
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        sock.close()


def drive(port: int, count: int, concurrency: int) -> tuple:
    """Run ``count`` connections, ``concurrency`` at a time; return ``(failures, seconds)``."""
    failures: list = []
    indices = iter(range(count))

    def client() -> None:
        for i in indices:
            source, expected = CLIENTS[i % len(CLIENTS)]
            try:
                reply = ask(port, source)
            except OSError as exc:
                failures.append((i, source, repr(exc)))
                continue
            if reply != expected:
                failures.append((i, source, f"answered {reply[:80]!r}"))

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(client) for _ in range(concurrency)], raise_error=True)
    return failures, time.perf_counter() - started


# -- the run ------------------------------------------------------------------------


def soak(connections: int, concurrency: int = 50, warmup: int = 2000) -> Result:
    """Start the example, warm it up, load it, and measure it before and after."""
    example = Example()
    try:
        idle = example.usage()
        warm_failures, _ = drive(example.port, warmup, concurrency)
        example.settle(idle)
        start = example.usage()
        failures, seconds = drive(example.port, connections, concurrency)
        settled = example.settle(idle)
        end = example.usage()
    finally:
        example.stop()
    return Result(connections, seconds, warm_failures + failures, start, end, settled)


def report(result: Result, out=sys.stdout) -> None:
    """Print the figures of ``result``."""
    print(
        f"{'process':<8} {'fds start':>9} {'fds end':>8} {'RSS start':>10} "
        f"{'RSS end':>9} {'growth':>9}",
        file=out,
    )
    for name, before in result.start.items():
        after = result.end[name]
        print(
            f"{name:<8} {before.fds:>9} {after.fds:>8} {_mib(before.rss_kib):>10} "
            f"{_mib(after.rss_kib):>9} {after.rss_kib - before.rss_kib:>+5} KiB",
            file=out,
        )
    print(
        f"{result.connections} connections in {result.seconds:.1f} s: "
        f"{result.rate:.0f} connections/s",
        file=out,
    )
    if not result.settled:
        print(f"sockets still open {SETTLE_TIMEOUT:.0f} s after the load", file=out)
    print(f"not answered in full: {len(result.failures)}", file=out)
    for index, source, what in result.failures[:20]:
        print(f"  connection {index} from {source}: {what}", file=out)


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--connections",
        "-n",
        type=int,
        default=100_000,
        help="hand-offs to measure (default %(default)s)",
    )
    parser.add_argument(
        "--concurrency", "-c", type=int, default=50, help="clients at a time (default %(default)s)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=2000,
        help="connections before the first measurement (default %(default)s)",
    )
    args = parser.parse_args(argv)
    print(
        f"soak: {args.connections} hand-offs through examples/priority "
        f"(parent + 2 workers), {args.concurrency} clients at a time, "
        f"after {args.warmup} to warm up",
        flush=True,
    )
    result = soak(args.connections, args.concurrency, args.warmup)
    report(result)
    fds_back = all(result.start[name].fds == result.end[name].fds for name in result.start)
    return 0 if result.settled and fds_back and not result.failures else 1


if __name__ == "__main__":
    sys.exit(main())
