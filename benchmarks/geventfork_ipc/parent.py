"""IPC benchmarks of ``geventfork.fork()``; prints one JSON line of figures.

Usage: python -m geventfork parent.py stream N | pingpong N | large SIZE COUNT | cost K

The same program as ``benchmarks/node/ipc_parent.js`` (same messages, same
JSON); keep the two in step:

  stream N          N small messages parent -> child; the child reports the
                    count once it has them all: msgs/s.
  pingpong N        N round trips, one message in flight: round trips/s.
  large SIZE COUNT  COUNT messages carrying a SIZE-character string: MB/s.
  cost K            K children forked one after the other: fork() -> 'spawn'
                    and fork() -> the child's first message, and the idle
                    child's VmRSS (medians).
"""

import json
import os
import re
import statistics
import sys
import time

from gevent.event import AsyncResult

from geventfork import fork

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child.py")


def report(figures):
    """Print the figures as one JSON line."""
    print(json.dumps(figures), flush=True)


def fork_ready(*args):
    """Fork the child with ``args`` and return it once it said it is ready."""
    child = fork(CHILD, args)
    ready = AsyncResult()
    child.once("message", lambda m, handle: ready.set(m))
    ready.get()
    return child


def finish(child):
    """Close the child's channel (it then exits) and wait for it."""
    child.disconnect()
    child.wait()


def stream(n):
    child = fork_ready("stream", n)
    done = AsyncResult()
    child.on("message", lambda m, handle: done.set(m))
    start = time.perf_counter()
    for i in range(n):
        child.send({"seq": i, "text": "hello"})
    count = done.get()["count"]
    elapsed = time.perf_counter() - start
    report({"bench": "stream", "n": count, "elapsed_s": elapsed, "msgs_per_s": count / elapsed})
    finish(child)


def pingpong(n):
    child = fork_ready("pingpong", n)
    done = AsyncResult()

    @child.on("message")
    def on_message(m, handle):
        if m["seq"] + 1 < n:
            child.send({"seq": m["seq"] + 1})
            return
        done.set()

    start = time.perf_counter()
    child.send({"seq": 0})
    done.get()
    elapsed = time.perf_counter() - start
    report({"bench": "pingpong", "n": n, "elapsed_s": elapsed, "round_trips_per_s": n / elapsed})
    finish(child)


def large(size, count):
    data = "x" * size
    child = fork_ready("large", count)
    done = AsyncResult()
    child.on("message", lambda m, handle: done.set(m))
    start = time.perf_counter()
    for i in range(count):
        child.send({"seq": i, "data": data})
    m = done.get()
    elapsed = time.perf_counter() - start
    ok = m["count"] == count and m["bytes"] == size * count
    report(
        {
            "bench": "large",
            "size": size,
            "count": m["count"],
            "ok": ok,
            "elapsed_s": elapsed,
            "mb_per_s": size * count / elapsed / 1e6,
        }
    )
    finish(child)


def vm_rss_kib(pid):
    """The process's resident set size, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def cost_sample():
    """Fork one idle child; return its spawn and ready times and its RSS."""
    sample = {}
    start = time.perf_counter()
    child = fork(CHILD, ["idle"])
    child.on("spawn", lambda: sample.update(spawn_ms=(time.perf_counter() - start) * 1e3))
    ready = AsyncResult()
    child.once("message", lambda m, handle: ready.set())
    ready.get()
    sample["ready_ms"] = (time.perf_counter() - start) * 1e3
    sample["rss_kib"] = vm_rss_kib(child.pid)
    finish(child)
    return sample


def cost(k):
    samples = [cost_sample() for _ in range(k)]
    report(
        {
            "bench": "cost",
            "k": k,
            **{
                name: statistics.median_low(s[name] for s in samples)
                for name in ("spawn_ms", "ready_ms", "rss_kib")
            },
        }
    )


BENCHES = {"stream": stream, "pingpong": pingpong, "large": large, "cost": cost}

if len(sys.argv) < 3 or sys.argv[1] not in BENCHES:
    sys.exit("usage: parent.py stream N | pingpong N | large SIZE COUNT | cost K")
BENCHES[sys.argv[1]](*map(int, sys.argv[2:]))
