"""What the Python peers' IPC programs share: the benchmarks and the child's loop.

The same messages and figures as ``benchmarks/geventfork_ipc/`` and
``benchmarks/node/ipc_*.js`` (see their docstrings); only the transport
differs. A transport is two functions: ``get()`` returns the next message
(raising ``EOFError`` once the other end closed) and ``put(message)`` sends
one.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Tuple

__all__ = ["BENCHES", "serve", "main"]

Get = Callable[[], Any]
Put = Callable[[Any], None]
#: ``start(mode, n)``: start the child; return its ``(get, put, finish)``,
#: ``finish()`` closing our end and waiting for the child to exit.
Start = Callable[[str, int], Tuple[Get, Put, Callable[[], None]]]


def serve(get: Get, put: Put, mode: str, expected: int) -> None:
    """The child: say ready, then count ('stream', 'large') or echo ('pingpong') until EOF."""
    put({"type": "ready"})
    count = 0
    bytes_ = 0
    while True:
        try:
            m = get()
        except EOFError:
            return
        if mode == "pingpong":
            put(m)
            continue
        count += 1
        if "data" in m:
            bytes_ += len(m["data"])
        if count == expected:
            put({"type": "done", "count": count, "bytes": bytes_})


def _ready(start: Start, mode: str, n: int) -> tuple:
    get, put, finish = start(mode, n)
    get()  # {"type": "ready"}
    return get, put, finish


def stream(start: Start, n: int) -> dict:
    """N small messages parent -> child; the child reports the count: msgs/s."""
    get, put, finish = _ready(start, "stream", n)
    began = time.perf_counter()
    for i in range(n):
        put({"seq": i, "text": "hello"})
    count = get()["count"]
    elapsed = time.perf_counter() - began
    finish()
    return {"bench": "stream", "n": count, "elapsed_s": elapsed, "msgs_per_s": count / elapsed}


def pingpong(start: Start, n: int) -> dict:
    """N round trips, one message in flight: round trips/s."""
    get, put, finish = _ready(start, "pingpong", n)
    began = time.perf_counter()
    seq = 0
    while seq < n:
        put({"seq": seq})
        seq = get()["seq"] + 1
    elapsed = time.perf_counter() - began
    finish()
    return {"bench": "pingpong", "n": n, "elapsed_s": elapsed, "round_trips_per_s": n / elapsed}


def large(start: Start, size: int, count: int) -> dict:
    """COUNT messages carrying a SIZE-character string: MB/s."""
    data = "x" * size
    get, put, finish = _ready(start, "large", count)
    began = time.perf_counter()
    for i in range(count):
        put({"seq": i, "data": data})
    m = get()
    elapsed = time.perf_counter() - began
    finish()
    return {
        "bench": "large",
        "size": size,
        "count": m["count"],
        "ok": m["count"] == count and m["bytes"] == size * count,
        "elapsed_s": elapsed,
        "mb_per_s": size * count / elapsed / 1e6,
    }


BENCHES = {"stream": stream, "pingpong": pingpong, "large": large}
USAGE = "stream N | pingpong N | large SIZE COUNT"


def main(argv: list, start: Start) -> int:
    """Run the benchmark ``argv`` names with the transport ``start`` makes; print its JSON line.

    Returns:
        The exit status: 0, or 2 for a bad command line.
    """
    try:
        bench = BENCHES[argv[0]]
        numbers = [int(a) for a in argv[1:]]
    except (IndexError, KeyError, ValueError):
        print(f"usage: {USAGE}", flush=True)
        return 2
    print(json.dumps(bench(start, *numbers)), flush=True)
    return 0
