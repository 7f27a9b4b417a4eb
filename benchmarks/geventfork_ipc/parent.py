"""IPC benchmarks of ``geventfork.fork()``; prints one JSON line of figures.

Usage: python -m geventfork parent.py [--serialization json|pickle] [--receive message|recv]
                                      stream N | pingpong N | large SIZE COUNT | cost K

The same program as ``benchmarks/node/ipc_parent.js`` (same messages, same
JSON); keep the two in step:

  stream N          N small messages parent -> child; the child reports the
                    count once it has them all: msgs/s.
  pingpong N        N round trips, one message in flight: round trips/s.
  large SIZE COUNT  COUNT messages carrying a SIZE-character string: MB/s.
  cost K            K children forked one after the other: fork() -> 'spawn'
                    and fork() -> the child's first message, and the idle
                    child's VmRSS (medians).

--serialization is the channel's (default JSON, as Node's); --receive is
how both ends take their messages: with a ``'message'`` listener (the
default, as Node's programs do) or with ``recv()`` (``messages()`` in the
child). 'cost' always listens.
"""

import argparse
import json
import os
import re
import statistics
import sys
import time

from gevent.event import AsyncResult

from geventfork import fork

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child.py")
#: Set from the command line: the channel's serialization and how both ends receive.
SERIALIZATION = "json"
RECEIVE = "message"


def report(figures):
    """Print the figures as one JSON line."""
    print(json.dumps(figures), flush=True)


def fork_ready(mode, n):
    """Fork the child in ``mode`` and return it once it said it is ready."""
    child = fork(CHILD, [mode, n, RECEIVE], serialization=SERIALIZATION)
    expect_message(child)()
    return child


def expect_message(child):
    """Get ready for the child's next message; return a function that waits for it.

    With ``recv()`` that function is ``recv()``; with listeners, a one-off
    listener is added now, so that it is there before the message can come.
    """
    if RECEIVE == "recv":
        return lambda: child.recv()[0]
    result = AsyncResult()
    child.once("message", lambda m, handle: result.set(m))
    return result.get


def finish(child):
    """Close the child's channel (it then exits) and wait for it."""
    child.disconnect()
    child.wait()


def stream(n):
    child = fork_ready("stream", n)
    done = expect_message(child)
    start = time.perf_counter()
    for i in range(n):
        child.send({"seq": i, "text": "hello"})
    count = done()["count"]
    elapsed = time.perf_counter() - start
    report({"bench": "stream", "n": count, "elapsed_s": elapsed, "msgs_per_s": count / elapsed})
    finish(child)


def pingpong(n):
    child = fork_ready("pingpong", n)
    start = time.perf_counter()
    if RECEIVE == "recv":
        pingpong_recv(child, n)
    else:
        pingpong_listen(child, n)
    elapsed = time.perf_counter() - start
    report({"bench": "pingpong", "n": n, "elapsed_s": elapsed, "round_trips_per_s": n / elapsed})
    finish(child)


def pingpong_recv(child, n):
    """N round trips, each waiting for its answer in ``recv()``."""
    seq = 0
    while seq < n:
        child.send({"seq": seq})
        m, _handle = child.recv()
        seq = m["seq"] + 1


def pingpong_listen(child, n):
    """N round trips, each answer sending the next message from the listener."""
    done = AsyncResult()

    @child.on("message")
    def on_message(m, handle):
        if m["seq"] + 1 < n:
            child.send({"seq": m["seq"] + 1})
            return
        done.set()

    child.send({"seq": 0})
    done.get()


def large(size, count):
    data = "x" * size
    child = fork_ready("large", count)
    done = expect_message(child)
    start = time.perf_counter()
    for i in range(count):
        child.send({"seq": i, "data": data})
    m = done()
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


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serialization", choices=("json", "pickle"), default="json")
    parser.add_argument("--receive", choices=("message", "recv"), default="message")
    parser.add_argument("bench", choices=sorted(BENCHES))
    parser.add_argument("numbers", type=int, nargs="+")
    return parser.parse_args(argv)


args = parse_args(sys.argv[1:])
SERIALIZATION, RECEIVE = args.serialization, args.receive
BENCHES[args.bench](*args.numbers)
