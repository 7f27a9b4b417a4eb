"""Where the geventfork child of the IPC stream benchmark spends its time.

Usage: python benchmarks/profile_ipc.py [--bench stream|pingpong] [--messages N]
                                        [--serialization json|pickle]
                                        [--receive message,recv] [--top K] [--py-spy PATH]

Runs ``geventfork_ipc/parent.py stream N`` (or ``pingpong N``) once per way
of receiving (``'message'`` listeners, ``recv()``) and prints the child's K
functions of most own time (``tottime``), from its first message to its Nth:

- by default with cProfile, which the child turns on itself
  (``GEVENTFORK_BENCH_PROFILE``, see ``geventfork_ipc/child.py``); it slows
  every Python call down, so the rate printed is not the benchmark's and
  small functions weigh more than they do;
- with ``--py-spy PATH`` (the py-spy program, e.g. from ``pip install
  py-spy``) by sampling both processes 1000 times a second instead, which
  leaves them at full speed; the child's and the parent's own time (samples
  whose innermost frame is the function; idle waits are not sampled) are
  printed, as % of that process's samples (those of imports left out).
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import pstats
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PARENT = os.path.join(HERE, "geventfork_ipc", "parent.py")
TIMEOUT = 300


def parse_args(argv: list) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", choices=("stream", "pingpong"), default="stream")
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--serialization", choices=("json", "pickle"), default="json")
    parser.add_argument("--receive", default="message,recv", help="comma-separated: message, recv")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--py-spy", metavar="PATH", help="sample with this py-spy instead")
    args = parser.parse_args(argv)
    args.receive = [r for r in args.receive.split(",") if r]
    if not args.receive or set(args.receive) - {"message", "recv"}:
        parser.error("--receive takes message, recv or both")
    return args


def bench_argv(args: argparse.Namespace, receive: str) -> list:
    """The benchmark's command line for one way of receiving."""
    options = ["--serialization", args.serialization, "--receive", receive]
    return [sys.executable, "-m", "geventfork", PARENT, *options, args.bench, str(args.messages)]


def run(argv: list, env: dict) -> dict:
    """Run the benchmark; return its JSON figures.

    Raises:
        SystemExit: it failed (its stderr is printed).
    """
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"{' '.join(argv)} exited with {done.returncode}")
    return json.loads(lines[-1])


def with_cprofile(args: argparse.Namespace, receive: str) -> str:
    """Profile the child with cProfile; return the figures line and the top functions."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "child.prof")
        figures = run(bench_argv(args, receive), {**os.environ, "GEVENTFORK_BENCH_PROFILE": path})
        out = io.StringIO()
        stats = pstats.Stats(path, stream=out)
        stats.sort_stats("tottime").print_stats(args.top)
    text = out.getvalue()
    table = text[text.index("   ncalls") :] if "   ncalls" in text else text
    return f"{rate(figures)} under cProfile\n{table}"


def with_py_spy(args: argparse.Namespace, receive: str) -> str:
    """Sample both processes with py-spy; return the figures line and each one's top functions."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "samples.txt")
        spy = [args.py_spy, "record", "--subprocesses", "--rate", "1000", "--format", "raw"]
        figures = run([*spy, "--output", path, "--", *bench_argv(args, receive)], dict(os.environ))
        with open(path) as f:
            samples = f.read().splitlines()
    parts = [f"{rate(figures)} while sampled"]
    for role, marker in (("child", "/child.py "), ("parent", "/parent.py ")):
        own = own_time(samples, marker)
        total = sum(own.values()) or 1
        parts.append(f"{role}: {total} samples")
        for name, count in own.most_common(args.top):
            parts.append(f"  {100 * count / total:5.1f}%  {name}")
    return "\n".join(parts)


def rate(figures: dict) -> str:
    """The benchmark's rate, with its unit."""
    if "msgs_per_s" in figures:
        return f"{figures['msgs_per_s']:.0f} msgs/s"
    return f"{figures['round_trips_per_s']:.0f} round trips/s"


_PROCESS = re.compile(r'^process \d+:"([^"]*)"$')
_LINE = re.compile(r":\d+\)$")


def own_time(samples: list, marker: str) -> collections.Counter:
    """Samples per innermost function, for the process whose command line holds ``marker``.

    A line of py-spy's raw output is ``frame;frame;...;innermost COUNT``;
    with ``--subprocesses`` the first frames are ``process PID:"COMMAND"``,
    the parent's then its child's. Stacks that are importing a module are
    left out (start-up, not messages), and frames are counted by function,
    whatever their line.
    """
    own: collections.Counter = collections.Counter()
    for line in samples:
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        commands = [m.group(1) for m in map(_PROCESS.match, frames) if m]
        if not commands or marker not in commands[-1] or "importlib._bootstrap" in stack:
            continue
        name = "(no Python frame)" if _PROCESS.match(frames[-1]) else _LINE.sub(")", frames[-1])
        own[name] += int(count)
    return own


def main(argv: list) -> int:
    args = parse_args(argv)
    profile = with_py_spy if args.py_spy else with_cprofile
    for receive in args.receive:
        print(
            f"## {args.bench} of {args.messages} messages, {args.serialization}, both ends "
            f"receive with {'recv()' if receive == 'recv' else repr('message')}\n"
        )
        print(profile(args, receive))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
