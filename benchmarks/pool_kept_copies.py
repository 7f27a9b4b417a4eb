"""What the Pool's kept copies of connections cost: idle CPU, and EOF latency.

Usage: python benchmarks/pool_kept_copies.py [--held 500,2000,4000]
           [--workers 4] [--idle 5] [--closes 1000] [--sections idle,close]

The Pool keeps its own copy of each TCP connection it hands to a worker
until the worker is done with it, so that a connection whose worker dies is
never lost. Two figures say what that costs (printed, nothing asserted):

- ``idle``: the pool's parent process, CPU % of one core while its workers
  hold N idle connections (each worker waits for a request that never
  comes), measured over ``--idle`` seconds once every connection was
  acknowledged. Target: under 2% with 4,000 connections.
- ``close``: a worker reads the request, writes a reply and only closes the
  gevent socket (``conn.socket.close()``, as ``gevent.pywsgi`` does): the
  time from the reply's arrival at the client to the client's EOF, for a
  Pool of one worker and for a child of plain ``fork()``, over ``--closes``
  connections made one after the other. With the Pool the EOF waits for the
  worker's DONE and the parent's close of its copy. Target: the Pool's
  median within 1 ms of ``fork()``'s.

Each measurement runs ``benchmarks/pool/server.py`` under
``python -m geventfork`` in a session of its own, stopped at the end (as
``run.py`` does). Needs Linux. Exits 1 if a server failed, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
import time

from _process_group import ProcessGroup, stop_all

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SERVER = os.path.join(HERE, "pool", "server.py")
#: Seconds the server may take to start or to have every connection acknowledged.
STARTUP = 30.0
#: Seconds left for the parent to settle once everything is acknowledged.
SETTLE = 1.0


def parse_args(argv: list) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--held",
        default="500,2000,4000",
        help="comma-separated numbers of idle connections to hold",
    )
    parser.add_argument("--workers", type=int, default=4, help="pool size for --held")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measured")
    parser.add_argument("--closes", type=int, default=1000, help="connections per system for close")
    parser.add_argument("--sections", default="idle,close", help="idle, close, or both")
    args = parser.parse_args(argv)
    args.held = [int(n) for n in args.held.split(",") if n]
    args.sections = set(args.sections.split(","))
    return args


class Server:
    """``server.py`` running in a session of its own; its output read line by line."""

    def __init__(self, workdir: str, *args: object) -> None:
        argv = [sys.executable, "-m", "geventfork", SERVER, *map(str, args)]
        name = "-".join(map(str, args))
        self.group = ProcessGroup(
            argv, os.path.join(workdir, f"{name}.out"), os.path.join(workdir, f"{name}.err")
        )
        self.port = self.wait_for("port")

    def wait_for(self, key: str, timeout: float = STARTUP) -> object:
        """The value of ``key`` in the first JSON line of stdout that has it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.group.output().splitlines():
                if line.startswith("{") and key in (message := json.loads(line)):
                    return message[key]
            if not self.group.running():
                raise RuntimeError(f"the server exited:\n{self.group.error_tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"no {key!r} from the server within {timeout} s")

    def parent_cpu(self) -> float:
        """CPU seconds the server's parent process (the group leader) used so far."""
        return self.group.cpu_seconds()[self.group.pgid]

    def stop(self) -> None:
        self.group.stop()


def measure_idle(workdir: str, held: int, workers: int, seconds: float) -> dict:
    """Parent CPU while pool workers hold ``held`` idle connections."""
    server = Server(workdir, "pool", "hold", workers, held)
    clients = []
    try:
        for _ in range(held):
            clients.append(socket.create_connection(("127.0.0.1", server.port)))
        server.wait_for("acknowledged")
        time.sleep(SETTLE)
        before = server.parent_cpu()
        time.sleep(seconds)
        used = server.parent_cpu() - before
        fds = len(os.listdir(f"/proc/{server.group.pgid}/fd"))
    finally:
        server.stop()
        for sock in clients:
            sock.close()
    return {"held": held, "cpu_percent": 100 * used / seconds, "parent_fds": fds}


def measure_close(workdir: str, system: str, count: int) -> dict:
    """Reply-to-EOF latency, in ms, when a worker only closes its socket."""
    server = Server(workdir, system, "close", 1, 0)
    gaps = []
    try:
        for _ in range(count):
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(b"request\n")
                data = sock.recv(64)
                replied = time.perf_counter()
                while data:
                    data = sock.recv(64)
                gaps.append((time.perf_counter() - replied) * 1000)
    finally:
        server.stop()
    gaps.sort()
    return {
        "system": system,
        "median_ms": statistics.median(gaps),
        "p90_ms": gaps[int(0.9 * len(gaps))],
        "p99_ms": gaps[int(0.99 * len(gaps))],
    }


def importable() -> None:
    """Let the servers import this checkout's geventfork, after any PYTHONPATH given."""
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = path + os.pathsep + ROOT if path else ROOT


def raise_open_files_limit() -> None:
    """Every client connection is an fd of ours: take the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list) -> int:
    args = parse_args(argv)
    importable()
    raise_open_files_limit()
    try:
        with tempfile.TemporaryDirectory(prefix="pool-bench-") as workdir:
            if "idle" in args.sections:
                print(
                    f"| held connections | parent CPU (% of a core, {args.idle:g} s idle) "
                    "| parent fds |\n| ---: | ---: | ---: |"
                )
                for held in args.held:
                    print(f"idle: {held} connections...", file=sys.stderr)
                    row = measure_idle(workdir, held, args.workers, args.idle)
                    print(
                        f"| {row['held']} | {row['cpu_percent']:.2f} | {row['parent_fds']} |",
                        flush=True,
                    )
            if "close" in args.sections:
                print(
                    "\n| worker closes its socket | reply to EOF median (ms) | p90 | p99 |\n"
                    "| --- | ---: | ---: | ---: |"
                )
                rows = []
                for system in ("fork", "pool"):
                    print(f"close: {system}...", file=sys.stderr)
                    rows.append(measure_close(workdir, system, args.closes))
                    row = rows[-1]
                    print(
                        f"| {system} | {row['median_ms']:.3f} | {row['p90_ms']:.3f} "
                        f"| {row['p99_ms']:.3f} |",
                        flush=True,
                    )
                print(
                    f"\npool - fork, median: {rows[1]['median_ms'] - rows[0]['median_ms']:.3f} ms"
                )
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:
        print(f"pool_kept_copies: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
