"""What the benchmark scripts share while they run: their error, progress
lines, the loop that makes the measurements, and a command's output."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from typing import Any, Callable, DefaultDict, Iterable, List, Tuple

__all__ = ["BenchError", "say", "measure_all", "output", "checkout", "machine"]

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class BenchError(Exception):
    """A measurement (or its set-up) could not be made: the system did not
    start, crashed, or printed no figures; the message says why."""


def say(text: str, end: str = "\n") -> None:
    """Progress, on stderr."""
    print(text, end=end, file=sys.stderr, flush=True)


#: One measurement: ``(label, where, key, run)``. ``label`` begins its
#: progress line, ``where`` names it in a failure, ``run()`` returns its
#: figures, which go to ``results[key]``.
Job = Tuple[str, str, Any, Callable[[], dict]]


def measure_all(
    jobs: Iterable[Job], summary: Callable[[dict], str]
) -> Tuple[DefaultDict[Any, List[dict]], List[str]]:
    """Run every job, a progress line each (``summary(figures)``, or FAILED);
    return ``(results, failures)``: a failed measurement is left out, not fatal."""
    results: DefaultDict[Any, List[dict]] = defaultdict(list)
    failures: List[str] = []
    for label, where, key, run in jobs:
        say(f"{label} ", end="")
        try:
            figures = run()
        except BenchError as exc:
            failures.append(f"{where}: {exc}")
            say(f"FAILED: {exc}")
            continue
        results[key].append(figures)
        say(summary(figures))
    return results, failures


def output(cmd: list) -> str:
    """What ``cmd`` printed on stdout, stripped, or "" if it could not run."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=HERE)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def checkout() -> str:
    """This checkout's commit, marked if geventfork/ has uncommitted changes."""
    commit = output(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    if commit and output(["git", "-C", ROOT, "status", "--porcelain", "--", "geventfork"]):
        commit += " + uncommitted changes in geventfork/"
    return commit or "unknown"


def machine() -> str:
    """How many CPUs, and how busy the machine was as the run began."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load}"
