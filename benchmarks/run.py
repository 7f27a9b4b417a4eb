"""geventfork against Node.js, a bare gevent floor, gipc and multiprocessing.Pipe, side by side.

Usage: python benchmarks/run.py [--rounds N] [--quick] [--sections LIST]
                                [--systems LIST] [--json PATH]

Builds loadgen.c (and installs gipc with pip if it is missing), then for
each round runs every selected section once per system, in turn (node,
geventfork, floor, node, ...), each from a fresh start, and prints the
median of each figure over the rounds with the targets of the performance
issues. Progress goes to stderr, the tables to stdout. Exits 1 if a system
failed to run (a missed target is not a failure), 2 if the harness could
not start, 130 on Ctrl-C. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import signal
import sys
import tempfile
import time

from _console import BenchError, checkout, machine, measure_all, output, say
from _options import names
from _process_group import stop_all
from _report import ipc_table, table
from _systems import (
    COST,
    HANDOFF,
    Settings,
    build_loadgen,
    ensure_gipc,
    measure_handoff,
    measure_ipc,
)

SECTIONS = ("silent", "request", "stream", "pingpong", "large", "cost")
GROUPS = {"handoff": ("silent", "request"), "ipc": ("stream", "pingpong", "large"), "all": SECTIONS}
SYSTEMS = ("node", "geventfork", "floor", "gipc", "pipe")
#: The IPC programs (``_systems.IPC``) of each system.
IPC_PROGRAMS = {
    "node": ("node",),
    "geventfork": ("geventfork", "geventfork-recv", "geventfork-pickle", "geventfork-recv-pickle"),
    "gipc": ("gipc",),
    "pipe": ("pipe", "pipe-gevent"),
}
MIN_ROUNDS = 3


def parse_args(argv: list) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds",
        type=int,
        default=MIN_ROUNDS,
        help=f"rounds to take the median of (at least {MIN_ROUNDS})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="about a quarter of the work per measurement"
    )
    parser.add_argument(
        "--sections",
        default="all",
        help=(f"comma-separated: {', '.join(SECTIONS)}, or the groups {', '.join(GROUPS)}"),
    )
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"comma-separated: {', '.join(SYSTEMS)}"
    )
    parser.add_argument(
        "--nofile",
        type=int,
        default=Settings.nofile,
        help=(
            "open-files limit (soft and hard) of the systems under test (default %(default)s, "
            "the usual soft limit; 0 keeps this shell's)"
        ),
    )
    parser.add_argument("--json", metavar="PATH", help="also write every round's figures here")
    args = parser.parse_args(argv)
    if args.rounds < MIN_ROUNDS:
        parser.error(f"--rounds must be at least {MIN_ROUNDS}")
    args.sections = names(parser, args.sections, SECTIONS, GROUPS)
    args.systems = names(parser, args.systems, SYSTEMS, {})
    return args


def plan(args: argparse.Namespace, settings: Settings, loadgen: str, workdir: str) -> list:
    """One round's measurements, as ``(section, system, run)``, systems alternating."""
    jobs = []
    for mode in ("silent", "request"):
        if mode in args.sections:
            for system in (s for s in args.systems if s in HANDOFF):
                run = functools.partial(measure_handoff, system, mode, loadgen, settings, workdir)
                jobs.append((f"hand-off {mode}", system, run))
    for section, bench in _ipc_benches(args.sections, settings):
        for system in args.systems:
            for program in IPC_PROGRAMS.get(system, ()):
                if section == "cost" and program not in COST:
                    continue
                run = functools.partial(_ipc, program, bench, settings, workdir)
                jobs.append((section, program, run))
    return jobs


def _ipc_benches(sections: list, settings: Settings) -> list:
    benches = []
    if "stream" in sections:
        benches.append(("IPC stream", ["stream", settings.stream]))
    if "pingpong" in sections:
        benches.append(("IPC ping-pong", ["pingpong", settings.pingpong]))
    if "large" in sections:
        benches += [
            (f"IPC large {size >> 20} MiB", ["large", size, count])
            for size, count in settings.large
        ]
    if "cost" in sections:
        benches.append(("cost", ["cost", settings.cost]))
    return benches


def _ipc(system: str, bench: list, settings: Settings, workdir: str) -> dict:
    figures = measure_ipc(system, bench, settings, workdir)
    if "rss_kib" in figures:
        figures["rss_mib"] = figures["rss_kib"] / 1024
    return figures


def run_rounds(rounds: int, jobs: list) -> tuple:
    """Run every job once per round; return ``(results, failures)``."""
    return measure_all(
        (
            (
                f"round {number}/{rounds}  {section:<17} {system:<22}",
                f"round {number}, {section}, {system}",
                (section, system),
                run,
            )
            for number in range(1, rounds + 1)
            for section, system, run in jobs
        ),
        _summary,
    )


def _summary(figures: dict) -> str:
    """A short progress line for one measurement."""
    if "conn_per_s" in figures:
        outcomes = ", ".join(
            f"{k} {figures[k]}" for k in ("reset", "empty", "hung", "connect_error")
        )
        died = f", server died:\n{figures['died_with']}" if figures["server_died"] else ""
        return f"{figures['conn_per_s']:.0f} conn/s ({outcomes}{died})"
    for key, unit in (
        ("msgs_per_s", "msgs/s"),
        ("round_trips_per_s", "round trips/s"),
        ("mb_per_s", "MB/s"),
    ):
        if key in figures:
            return f"{figures[key]:.0f} {unit}"
    return (
        f"spawn {figures['spawn_ms']:.1f} ms, ready {figures['ready_ms']:.1f} ms, "
        f"RSS {figures['rss_mib']:.1f} MiB"
    )


def versions() -> str:
    """What ran: Python, gevent, gipc, Node, the geventfork checkout, the machine."""
    import importlib.metadata

    import gevent

    try:
        gipc = importlib.metadata.version("gipc")
    except importlib.metadata.PackageNotFoundError:
        gipc = "missing"

    node = output(["node", "--version"]) or "missing"
    return (
        f"Python {sys.version.split()[0]} ({sys.executable}), gevent {gevent.__version__}, "
        f"gipc {gipc}, Node {node}, geventfork {checkout()}; {machine()}"
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list) -> int:
    args = parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    settings.nofile = args.nofile
    missing = [
        tool
        for tool in ("gcc", *(["node"] if "node" in args.systems else []))
        if shutil.which(tool) is None
    ]
    if missing:
        say(f"not found on PATH: {', '.join(missing)}")
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with it ignored
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    started = time.monotonic()
    say(versions())
    notes: list = []
    workdir = tempfile.mkdtemp(prefix="geventfork-bench-")
    try:
        notes = _check_gipc(args)
        loadgen = build_loadgen(workdir)
        results, failures = run_rounds(args.rounds, plan(args, settings, loadgen, workdir))
    except KeyboardInterrupt:
        say("\ninterrupted: stopping everything started")
        return 130
    except BenchError as exc:
        say(str(exc))
        return 2
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup short
        stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    report(args, settings, results, failures, notes, time.monotonic() - started)
    return 1 if failures else 0


def _check_gipc(args: argparse.Namespace) -> list:
    """Install gipc if an IPC section will run it; drop it from ``args.systems`` if that fails.

    Returns:
        Lines for the report: why gipc is not measured, if it is not.
    """
    ipc = any(section in args.sections for section in GROUPS["ipc"])
    if "gipc" not in args.systems or not ipc:
        return []
    try:
        ensure_gipc()
    except BenchError as exc:
        note = f"gipc not installable: {exc}; its IPC figures are left out"
        say(note)
        args.systems.remove("gipc")
        return [note]
    return []


def report(
    args: argparse.Namespace,
    settings: Settings,
    results: dict,
    failures: list,
    notes: list,
    elapsed: float,
) -> None:
    """Print the versions, the tables, the notes and the failures; write --json if asked."""
    print(versions())
    print(
        f"{args.rounds} rounds{' (quick)' if args.quick else ''}, median of each figure "
        f"(counts: total over the rounds); {settings.concurrency} clients, "
        f"{settings.duration:g} s of load per hand-off measurement (after {settings.warmup:g} s "
        f"of silent warm-up), open-files limit {settings.nofile or 'inherited'}\n"
    )
    for text in (table(results), ipc_table(results)):
        if text:
            print(f"{text}\n")
    for note in notes:
        print(note)
    for failure in failures:
        print(f"\nFAILED {failure}")
    print(f"\nrun took {elapsed:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {f"{section} / {system}": rounds for (section, system), rounds in results.items()},
                f,
                indent=1,
            )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
