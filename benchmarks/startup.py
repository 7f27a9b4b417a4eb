"""Start-up cost: fork() -> the child's first message, spawn vs fork server vs Node.

    python benchmarks/startup.py [--samples 20] [--children 50]

Each system runs in a fresh parent process of its own:

- one child at a time, ``--samples`` times: ``fork()`` -> the child's first
  message (median). The fork server's first ``fork()`` starts its template
  and is shown apart ("first"); Node's is ``benchmarks/node/ipc_parent.js
  cost``, the same child program in Node.
- ``--children`` children forked at once: the time spent inside the
  ``fork()`` calls, and until every child has sent its first message.

The child is ``benchmarks/geventfork_ipc/child.py idle`` (Node:
``ipc_child.js idle``): it says ``{"type": "ready"}`` and waits. Prints a
table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHILD = os.path.join(HERE, "geventfork_ipc", "child.py")
NODE_DIR = os.path.join(HERE, "node")

#: Node forking COUNT children at once: ms in the fork() calls, ms until all answered.
NODE_AT_ONCE = """
const { fork } = require('node:child_process');
const count = Number(process.argv[1]);
const now = () => Number(process.hrtime.bigint()) / 1e6;
const start = now();
let ready = 0;
const children = [];
for (let i = 0; i < count; i++) {
  const child = fork(process.argv[2], ['idle']);
  children.push(child);
  child.once('message', () => {
    if (++ready === count) {
      console.log(JSON.stringify({ forks_ms: forksMs, all_ms: now() - start }));
      children.forEach((c) => c.disconnect());
    }
  });
}
const forksMs = now() - start;
"""


# -- inside a geventfork parent (python -m geventfork startup.py --inner ...) -------


def _inner(method: str, samples: int, count: int) -> None:
    from gevent.event import AsyncResult

    from geventfork import fork

    def sample() -> float:
        start = time.perf_counter()
        child = fork(CHILD, ["idle"], start_method=method)
        ready = AsyncResult()
        child.once("message", lambda m, handle: ready.set())
        ready.get()
        elapsed = (time.perf_counter() - start) * 1e3
        child.disconnect()
        child.wait()
        return elapsed

    first = sample()
    ready_ms = statistics.median(sample() for _ in range(samples))
    start = time.perf_counter()
    readies = []
    children = []
    for _ in range(count):
        child = fork(CHILD, ["idle"], start_method=method)
        ready = AsyncResult()
        child.once("message", lambda m, handle, ready=ready: ready.set())
        readies.append(ready)
        children.append(child)
    forks_ms = (time.perf_counter() - start) * 1e3
    for ready in readies:
        ready.get()
    all_ms = (time.perf_counter() - start) * 1e3
    for child in children:
        child.disconnect()
    for child in children:
        child.wait()
    print(
        json.dumps(
            {"first_ms": first, "ready_ms": ready_ms, "forks_ms": forks_ms, "all_ms": all_ms}
        )
    )


# -- the driver ---------------------------------------------------------------------


def _run_json(argv: list, env: dict | None = None) -> dict:
    out = subprocess.run(argv, check=True, capture_output=True, text=True, env=env, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _python(method: str, samples: int, count: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    argv = [sys.executable, "-m", "geventfork", os.path.abspath(__file__)]
    return _run_json([*argv, "--inner", method, str(samples), str(count)], env)


def _node(samples: int, count: int) -> dict:
    cost = _run_json(["node", os.path.join(NODE_DIR, "ipc_parent.js"), "cost", str(samples)])
    child = os.path.join(NODE_DIR, "ipc_child.js")
    at_once = _run_json(["node", "-e", NODE_AT_ONCE, str(count), child])
    return {"first_ms": None, "ready_ms": cost["ready_ms"], **at_once}


def _table(rows: dict, samples: int, count: int) -> str:
    node = rows.get("node", {}).get("ready_ms")
    lines = [
        f"{'system':<12} {'first':>9} {'median of ' + str(samples):>14} {'x Node':>7} "
        f"{str(count) + ' at once: fork() calls':>27} {'all answered':>13}",
    ]
    for name, row in rows.items():
        first = "-" if row["first_ms"] is None else f"{row['first_ms']:.1f} ms"
        ratio = f"{row['ready_ms'] / node:.2f}" if node else "-"
        lines.append(
            f"{name:<12} {first:>9} {row['ready_ms']:>11.1f} ms {ratio:>7} "
            f"{row['forks_ms']:>24.0f} ms {row['all_ms']:>10.0f} ms"
        )
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--inner"]:
        method, samples, count = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        _inner(method, samples, count)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--children", type=int, default=50)
    parser.add_argument("--no-node", action="store_true", help="leave Node out")
    options = parser.parse_args()
    rows = {}
    if not options.no_node:
        rows["node"] = _node(options.samples, options.children)
    for method in ("spawn", "forkserver"):
        rows[method] = _python(method, options.samples, options.children)
    print(
        "fork() -> the child's first message (first: the first fork(); the fork "
        "server's starts its template)"
    )
    print(_table(rows, options.samples, options.children))


if __name__ == "__main__":
    main()
