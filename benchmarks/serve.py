"""geventfork serve against gunicorn -k gevent: the same Flask app, 2 workers each, wrk.

Usage: python benchmarks/serve.py [--rounds N] [--quick] [--sections LIST]
                                  [--servers LIST] [--python PATH] [--json PATH]

Installs gunicorn, gevent, Flask and this checkout's geventfork into a venv
of its own (benchmarks/build/venv-serve), then for each round runs every
selected section once per server, a fresh server each time, the servers in
turn (the order flips every round), and prints the median of each figure
over the rounds with the targets of the serve issue. Progress goes to
stderr, the table to stdout. Exits 1 if a server failed to run (a missed
target is not a failure), 2 if the harness could not start, 130 on Ctrl-C.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time

from _console import BenchError, measure_all, say
from _options import names
from _process_group import stop_all
from _serve_loads import measure_load, measure_reload, wrk_argv
from _serve_report import slow_ceiling, table
from _serve_setup import (
    GROUPS,
    LOADS,
    MIN_ROUNDS,
    SECTIONS,
    SERVERS,
    Settings,
    prepare_python,
    servers,
    versions,
)

# Running it all ------------------------------------------------------------------------


def parse_args(argv: list) -> argparse.Namespace:
    """The options; a usage error exits 2 with argparse's message."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=None, help=f"runs to take the median of [{MIN_ROUNDS}]"
    )
    parser.add_argument(
        "--quick", action="store_true", help="one run, 3 s of load per measurement, 3 HUPs"
    )
    parser.add_argument(
        "--sections",
        default="all",
        help=f"comma-separated: {', '.join(SECTIONS)}, or the groups {', '.join(GROUPS)}",
    )
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help="comma-separated: " + ", ".join(SERVERS)
    )
    parser.add_argument(
        "--python",
        metavar="PATH",
        help="run the servers with this Python as it is (no venv, nothing installed)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write every run's figures here")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else MIN_ROUNDS
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.sections = names(parser, args.sections, SECTIONS, GROUPS)
    args.servers = names(parser, args.servers, SERVERS, {})
    return args


def plan(args: argparse.Namespace, table_servers: dict, settings: Settings, workdir: str) -> list:
    """Every measurement, as ``(round, section, server, run)``; the order flips per round."""
    jobs = []
    for number in range(1, args.rounds + 1):
        order = args.servers if number % 2 else list(reversed(args.servers))
        for section in args.sections:
            for name in order:
                server = table_servers[name]
                if not server.available:
                    continue
                tag = f"{section}-{name}-{number}"
                if section == "reload":
                    run = (measure_reload, server, settings, workdir, tag)
                else:
                    run = (measure_load, server, LOADS[section], settings, workdir, tag)
                jobs.append((number, section, name, run))
    return jobs


def run_all(rounds: int, jobs: list) -> tuple:
    """Run every job; return ``(results, failures)``."""
    return measure_all(
        (
            (
                f"run {number}/{rounds}  {section:<9} {name:<10}",
                f"run {number}, {section}, {name}",
                (section, name),
                functools.partial(*run),
            )
            for number, section, name, run in jobs
        ),
        _summary,
    )


def _summary(figures: dict) -> str:
    """A progress line for one measurement."""
    if "req_per_s" in figures:
        return (
            f"{figures['req_per_s']:.0f} req/s, p50 {figures.get('p50_ms', 0):.2f} ms, "
            f"p99 {figures.get('p99_ms', 0):.2f} ms, errors {figures['errors']}"
            + (", SERVER DIED" if figures["server_died"] else "")
        )
    seen = "; ".join(figures["python_keepalive_seen"])
    return (
        f"{figures['ok']} answered, {figures['failed']} failed "
        f"(wrk keep-alive {figures['wrk_keepalive_failed']} "
        f"[{figures['wrk_keepalive_kinds']}], wrk close {figures['wrk_close_failed']} "
        f"[{figures['wrk_close_kinds']}], Python keep-alive {figures['python_keepalive_failed']}"
        f"{': ' + seen if seen else ''}), Python keep-alive reopened "
        f"{figures['python_keepalive_reopened']}; idle clients "
        f"{figures['python_idle_failed']} failed of "
        f"{figures['python_idle_failed'] + figures['python_idle_ok']}"
        + (", SERVER DIED" if figures["server_died"] else "")
    )


def report(
    args: argparse.Namespace,
    settings: Settings,
    table_servers: dict,
    results: dict,
    failures: list,
    header: str,
    elapsed: float,
) -> None:
    """Print what ran, the commands, the table and the failures; write --json if asked."""
    print(header)
    print(
        f"{args.rounds} run(s){' (quick)' if args.quick else ''} per figure, median "
        f"(counts: total over the runs); each run: a fresh server, {settings.warmup} s of "
        f"warm-up load, then {settings.duration} s of wrk -t{settings.wrk_threads} --latency\n"
    )
    print("Commands (PORT: a free port of 127.0.0.1; run in benchmarks/):")
    for name in SERVERS:
        server = table_servers[name]
        state = "" if server.available else f"   (not available: {server.why_not})"
        print(f"    {server.shown}{state}")
    for name in ("keepalive", "close", "slow"):
        if name in args.sections:
            argv = wrk_argv(LOADS[name], 0, settings.duration, settings.wrk_threads)
            print("    " + shlex.join(argv).replace("127.0.0.1:0", "127.0.0.1:PORT"))
    if "reload" in args.sections:
        print(
            f"    reload: wrk -t1 -c20 and wrk -t1 -c10 -H 'Connection: close' plus "
            f"{settings.reload_clients} Python keep-alive clients (pauses 0.05-0.5 s), "
            f"SIGHUP to the parent {settings.hups} times, {settings.hup_interval:g} s apart; "
            f"apart: {settings.idle_clients} clients idle 2.5-3.5 s between requests"
        )
    print()
    available = {name: table_servers[name].available for name in SERVERS}
    print(table(results, available))
    ceiling = slow_ceiling(results)
    if ceiling:
        print(f"\n{ceiling}")
    for failure in failures:
        print(f"\nFAILED {failure}")
    print(f"\nrun took {elapsed:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {f"{section} / {name}": runs for (section, name), runs in results.items()},
                f,
                indent=1,
            )


def _interrupt(signum: int, frame: object) -> None:
    """TERM and HUP stop the run as Ctrl-C does (everything started is stopped)."""
    raise KeyboardInterrupt


def main(argv: list) -> int:
    """Set up, measure, report; return the exit status (see the module's docstring)."""
    args = parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    if shutil.which("wrk") is None:
        say("wrk not found on PATH (Debian, Ubuntu: apt-get install wrk)")
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="geventfork-serve-bench-")
    try:
        python = prepare_python(args.python, os.path.join(workdir, "pip.log"))
        table_servers = servers(python)
        header = versions(python)
        say(header)
        for server in table_servers.values():
            if not server.available and server.name in args.servers:
                say(f"{server.name} serve: not available ({server.why_not})")
        jobs = plan(args, table_servers, settings, workdir)
        results, failures = run_all(args.rounds, jobs)
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
    report(args, settings, table_servers, results, failures, header, time.monotonic() - started)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
