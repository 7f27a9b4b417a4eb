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
import http.client
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Optional

from _process_group import ProcessGroup, stop_all

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VENV = os.path.join(HERE, "build", "venv-serve")
APP = "serve_app:app"
SLOW = 0.05  #: seconds serve_app's /slow sleeps
WORKERS = 2
SERVERS = ("geventfork", "gunicorn")
SECTIONS = ("keepalive", "close", "slow", "reload")
GROUPS = {"load": ("keepalive", "close", "slow"), "all": SECTIONS}
MIN_ROUNDS = 3
#: wrk's error counts: its socket errors, then answers not 2xx or 3xx.
ERROR_KINDS = ("connect", "read", "write", "timeout", "non_2xx")
ERROR_LABELS = "connect/read/write/timeout/non-2xx"
#: What the venv gets from the package index (geventfork comes from ROOT).
REQUIREMENTS = ("gunicorn[gevent]", "gevent", "flask")


class BenchError(Exception):
    """A measurement (or the set-up) could not be made; the message says why."""


@dataclass(frozen=True)
class Load:
    """One wrk load: the path, how many connections, extra request headers."""

    title: str
    path: str
    connections: int
    headers: tuple = ()


LOADS = {
    "keepalive": Load("keep-alive", "/", 50),
    "close": Load("new connection per request", "/", 50, ("Connection: close",)),
    "slow": Load("slow route (sleep 0.05 s)", "/slow", 200),
}


@dataclass
class Settings:
    """How long each measurement lasts."""

    duration: int = 10  #: seconds of wrk load per measurement
    warmup: int = 1  #: seconds of wrk load first, not counted (workers booted, caches warm)
    hups: int = 5  #: SIGHUPs sent to the server's parent in the reload section
    hup_interval: float = 2.0  #: seconds between them
    reload_clients: int = 10  #: Python keep-alive clients during the reload section
    idle_clients: int = 4  #: Python keep-alive clients idle 2.5-3.5 s between requests
    wrk_threads: int = 2

    @classmethod
    def quick(cls) -> Settings:
        """One run of 3 s per load, 3 HUPs."""
        return cls(duration=3, hups=3, hup_interval=1.5)


# The servers ------------------------------------------------------------------


@dataclass
class Server:
    """How to start one server on a port, and whether it can run here."""

    name: str
    argv: Callable[[int], list]
    shown: str  #: the command line as a user types it, PORT for the port
    available: bool = True
    why_not: str = ""
    extra: list = field(default_factory=list)


def servers(python: str) -> dict:
    """The two servers, with the exact command lines used."""
    gunicorn_extra = _gunicorn_extra(python)
    bind = "127.0.0.1:{port}"
    gunicorn_args = ["-w", str(WORKERS), "-k", "gevent", "-b", bind, *gunicorn_extra, APP]
    geventfork_args = ["serve", APP, "-w", str(WORKERS), "-b", bind]
    found, why_not = _geventfork_serve_available(python)
    return {
        "geventfork": Server(
            "geventfork",
            lambda port: [python, "-m", "geventfork", *_fill(geventfork_args, port)],
            "geventfork " + shlex.join(_fill(geventfork_args, "PORT")),
            available=found,
            why_not=why_not,
        ),
        "gunicorn": Server(
            "gunicorn",
            lambda port: [python, "-m", "gunicorn", *_fill(gunicorn_args, port)],
            "gunicorn " + shlex.join(_fill(gunicorn_args, "PORT")),
        ),
    }


def _fill(args: list, port: object) -> list:
    return [a.format(port=port) for a in args]


def _gunicorn_extra(python: str) -> list:
    """``--no-control-socket`` where gunicorn has one (23+).

    The control socket is an admin interface served by a thread of the
    master, never on a request's path; by default every gunicorn of the
    machine binds the same ``~/.gunicorn/gunicorn.ctl``, which concurrent
    runs would take from each other.
    """
    help_text = _output([python, "-m", "gunicorn", "--help"])
    return ["--no-control-socket"] if "--no-control-socket" in help_text else []


def _geventfork_serve_available(python: str) -> tuple:
    """``(True, "")`` if this geventfork has ``serve``, else ``(False, the reason)``.

    Asked from an empty folder: a geventfork without the command would run a
    module named ``serve`` of the current folder (this file, in benchmarks/).
    """
    argv = [python, "-m", "geventfork", "serve", "--help"]
    with tempfile.TemporaryDirectory() as empty:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=empty)
        except (OSError, subprocess.SubprocessError) as exc:
            return False, str(exc)
    if done.returncode == 0 and "--workers" in done.stdout:
        return True, ""
    lines = (done.stderr or done.stdout).strip().splitlines()
    said = f": {lines[-1].strip()}" if lines else ""
    return False, f"python {shlex.join(argv[1:])} exited {done.returncode}{said}"


# The environment ----------------------------------------------------------------


def prepare_python(given: Optional[str], log_path: str) -> str:
    """The Python to run the servers with: ``given`` as it is, or the benchmark's venv.

    The venv is created once; every run installs what is missing of
    REQUIREMENTS and this checkout's geventfork afresh (a few seconds).

    Raises:
        BenchError: the venv could not be made or pip failed (with pip's last lines).
    """
    if given:
        return given
    python = os.path.join(VENV, "bin", "python")
    if not os.path.exists(python):
        say(f"creating {VENV}")
        _pip_step([sys.executable, "-m", "venv", VENV], log_path)
    say("installing " + ", ".join(REQUIREMENTS) + " and geventfork from " + ROOT)
    _pip_step([python, "-m", "pip", "install", "-q", *REQUIREMENTS], log_path)
    source = _copy_checkout(os.path.dirname(log_path))
    _pip_step(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", source], log_path
    )
    return python


def _copy_checkout(workdir: str) -> str:
    """A copy of what pip needs of the checkout, in ``workdir``; its path.

    pip builds a folder in place (``build/``, ``*.egg-info``): building a
    copy leaves the checkout as it was.
    """
    source = os.path.join(workdir, "geventfork-src")
    skip = shutil.ignore_patterns(
        ".git",
        ".tox",
        ".*cache",
        ".hypothesis",
        ".venv*",
        "venv",
        "build",
        "dist",
        "*.egg-info",
        "__pycache__",
        "benchmarks",
        "tests",
    )
    shutil.copytree(ROOT, source, ignore=skip)
    return source


def _pip_step(argv: list, log_path: str) -> None:
    with open(log_path, "ab") as log:
        code = subprocess.run(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL).returncode
    if code:
        with open(log_path, errors="replace") as f:
            tail = "".join(f.readlines()[-5:]).rstrip()
        raise BenchError(f"{' '.join(argv[:5])} ... failed ({code}):\n{tail}")


def versions(python: str) -> str:
    """What ran: the servers' Python and packages, wrk, the checkout, the machine."""
    code = (
        "import sys, importlib.metadata as m\n"
        "names = ('gunicorn', 'gevent', 'greenlet', 'flask', 'geventfork')\n"
        "def v(n):\n"
        "    try:\n"
        "        return m.version(n)\n"
        "    except m.PackageNotFoundError:\n"
        "        return 'missing'\n"
        "print(f'Python {sys.version.split()[0]} ({sys.executable}), '"
        " + ', '.join(f'{n} {v(n)}' for n in names))\n"
    )
    packages = _output([python, "-c", code]) or f"{python}: cannot tell"
    wrk = _output(["wrk", "-v"]).splitlines()
    commit = _output(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{packages}; geventfork checkout {commit or 'unknown'}; "
        f"{wrk[0].split(' Copyright')[0] if wrk else 'wrk ?'}; "
        f"{os.cpu_count()} CPUs, load average {load}"
    )


def _output(cmd: list) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=HERE)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (done.stdout + done.stderr).strip()


# One server, started and stopped ---------------------------------------------------


def free_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on now (both servers need a number)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(server: Server, workdir: str, tag: str) -> tuple:
    """Start ``server`` on a free port; return ``(group, port)`` once it answers ``/``.

    Ready means: the parent and its WORKERS workers run, and ``GET /`` is
    answered 200.

    Raises:
        BenchError: it exited or did not answer within 30 s (with its stderr tail).
    """
    port = free_port()
    out = os.path.join(workdir, f"{tag}.out")
    err = os.path.join(workdir, f"{tag}.err")
    group = ProcessGroup(server.argv(port), out, err, cwd=HERE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not group.running():
            raise BenchError(f"{server.name} exited at start:\n{group.error_tail()}")
        if len(group.cpu_seconds()) > WORKERS and _get(port, "/") == 200:
            return group, port
        time.sleep(0.1)
    group.stop()
    raise BenchError(f"{server.name} did not answer within 30 s:\n{group.error_tail()}")


def _get(port: int, path: str) -> Optional[int]:
    """The status of one GET, or None if it failed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


# wrk -------------------------------------------------------------------------------


def wrk_argv(load: Load, port: int, duration: int, threads: int) -> list:
    """The wrk command line for ``load``."""
    headers = [arg for h in load.headers for arg in ("-H", h)]
    return [
        "wrk",
        f"-t{threads}",
        f"-c{load.connections}",
        f"-d{duration}s",
        "--latency",
        *headers,
        f"http://127.0.0.1:{port}{load.path}",
    ]


def run_wrk(argv: list) -> dict:
    """Run wrk and return its figures (see ``parse_wrk``).

    Raises:
        BenchError: wrk failed or printed no rate.
    """
    duration = int(next(a for a in argv if a.startswith("-d"))[2:-1])
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not end: {' '.join(argv)}") from exc
    if done.returncode:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse_wrk(done.stdout)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(text: str) -> dict:
    """Figures from wrk's ``--latency`` output.

    Returns:
        ``req_per_s``, ``requests``, ``p50_ms``, ``p99_ms``, the errors
        ``connect``, ``read``, ``write``, ``timeout``, ``non_2xx`` and their
        sum ``errors``.

    Raises:
        BenchError: the output has no ``Requests/sec`` line.
    """
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if rate is None:
        raise BenchError(f"no rate in wrk's output:\n{text.strip()}")
    figures = {"req_per_s": float(rate.group(1))}
    count = re.search(r"^\s*(\d+) requests in", text, re.M)
    figures["requests"] = int(count.group(1)) if count else 0
    for pct in ("50", "99"):
        found = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        if found:
            figures[f"p{pct}_ms"] = float(found.group(1)) * _UNITS[found.group(2)]
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    names = ERROR_KINDS[:4]
    for name, value in zip(names, socket_errors.groups() if socket_errors else (0,) * 4):
        figures[name] = int(value)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    figures["non_2xx"] = int(non_2xx.group(1)) if non_2xx else 0
    figures["errors"] = sum(figures[k] for k in (*names, "non_2xx"))
    return figures


# The sections ------------------------------------------------------------------------


def measure_load(server: Server, load: Load, settings: Settings, workdir: str, tag: str) -> dict:
    """A fresh server, ``settings.warmup`` s of the load, then the measured wrk run."""
    group, port = start(server, workdir, tag)
    try:
        if settings.warmup:
            run_wrk(wrk_argv(load, port, settings.warmup, settings.wrk_threads))
        figures = run_wrk(wrk_argv(load, port, settings.duration, settings.wrk_threads))
        figures["server_died"] = int(not group.running())
        return figures
    finally:
        group.stop()


def measure_reload(server: Server, settings: Settings, workdir: str, tag: str) -> dict:
    """Requests that fail while the server's parent gets SIGHUP ``settings.hups`` times.

    The load: wrk with 20 keep-alive connections, wrk with 10 connections of
    one request each (``Connection: close``), and ``settings.reload_clients``
    Python ``http.client`` keep-alive connections that pause 0.05-0.5 s
    between requests (idle connections at the moment of a reload, as real
    browsers and proxies hold them). The first HUP comes after 1 s, then one
    every ``settings.hup_interval`` s; the load lasts 2 s past the last one.

    Apart, and not in the total: ``settings.idle_clients`` keep-alive
    connections idle 2.5-3.5 s between requests, longer than either
    server's default (gunicorn's ``--keep-alive 2``, geventfork's
    ``--idle-return 2``): what a keep-alive timeout does to a client that
    reuses its connection, HUP or not.
    """
    group, port = start(server, workdir, tag)
    duration = int(1 + settings.hups * settings.hup_interval + 2 + 0.999)
    wrks = {
        "wrk_keepalive": wrk_argv(Load("", "/", 20), port, duration, 1),
        "wrk_close": wrk_argv(Load("", "/", 10, ("Connection: close",)), port, duration, 1),
    }
    results: dict = {}
    threads = [
        threading.Thread(target=lambda k=k, a=a: results.__setitem__(k, _safe_wrk(a)))
        for k, a in wrks.items()
    ]
    clients = {
        "python_keepalive": KeepAliveClients(port, settings.reload_clients, (0.05, 0.5)),
        "python_idle": KeepAliveClients(port, settings.idle_clients, (2.5, 3.5)),
    }
    try:
        pids_before = set(group.cpu_seconds())
        for t in threads:
            t.start()
        for c in clients.values():
            c.start()
        time.sleep(1)
        for number in range(settings.hups):
            if not group.running():
                break
            os.kill(group.popen.pid, signal.SIGHUP)
            if number + 1 < settings.hups:
                time.sleep(settings.hup_interval)
        for t in threads:
            t.join()
        for c in clients.values():
            c.stop()
        figures = _reload_figures(results, clients)
        figures["server_died"] = int(not group.running())
        figures["workers_replaced"] = int(
            not (set(group.cpu_seconds()) - {group.popen.pid}) & pids_before
        )
        return figures
    finally:
        for c in clients.values():
            c.stop()
        group.stop()


def _safe_wrk(argv: list) -> object:
    """``run_wrk``, its BenchError returned instead of raised (it runs in a thread)."""
    try:
        return run_wrk(argv)
    except BenchError as exc:
        return exc


def _reload_figures(results: dict, clients: dict) -> dict:
    """The reload section's figures from wrk's results and the Python clients.

    ``ok`` and ``failed`` sum every load but the idle clients (``python_idle_*``).

    Raises:
        BenchError: a wrk run failed.
    """
    figures: dict = {}
    for kind, outcome in results.items():
        if isinstance(outcome, BenchError):
            raise outcome
        figures[f"{kind}_ok"] = outcome["requests"] - outcome["errors"]
        figures[f"{kind}_failed"] = outcome["errors"]
    for kind, group in clients.items():
        figures[f"{kind}_ok"] = group.ok
        figures[f"{kind}_failed"] = group.failed
        figures[f"{kind}_reopened"] = group.reopened
        figures[f"{kind}_seen"] = sorted(set(group.failures))[:3]
    counted = [k[: -len("_ok")] for k in figures if k.endswith("_ok") and "idle" not in k]
    figures["ok"] = sum(figures[f"{k}_ok"] for k in counted)
    figures["failed"] = sum(figures[f"{k}_failed"] for k in counted)
    return figures


class KeepAliveClients:
    """Threads, each sending GET / on one kept-alive ``http.client`` connection.

    Each pauses a random time in ``pause`` (seconds: low, high) between requests.

    A request that raises or is not answered 200 counts as failed (and the
    connection is opened again); a connection the server closed after a
    complete answer (``Connection: close``) is opened again by http.client
    and counts as reopened, not failed.
    """

    def __init__(self, port: int, count: int, pause: tuple) -> None:
        self.port = port
        self.count = count
        self.pause = pause
        self.ok = 0
        self.failed = 0
        self.reopened = 0
        self.failures: list = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list = []

    def start(self) -> None:
        """Start the clients."""
        for _ in range(self.count):
            thread = threading.Thread(target=self._client, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop the clients once their request in flight ended (at most 5 s)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(6)
        self._threads = []

    def _client(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        local = None
        try:
            while not self._stop.is_set():
                ok, why = self._one(conn)
                sock_name = conn.sock.getsockname() if conn.sock else None
                with self._lock:
                    if ok:
                        self.ok += 1
                    else:
                        self.failed += 1
                        self.failures.append(why)
                    if ok and local is not None and sock_name != local:
                        self.reopened += 1
                local = sock_name if ok else None
                self._stop.wait(random.uniform(*self.pause))
        finally:
            conn.close()

    @staticmethod
    def _one(conn: http.client.HTTPConnection) -> tuple:
        """One request: ``(True, "")`` or ``(False, why)``."""
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            return False, f"{type(exc).__name__}: {exc}"
        if response.status != 200:
            return False, f"status {response.status}"
        return True, ""


# The report -------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One figure of a section; ``target`` is how geventfork's is judged against gunicorn's.

    ``target``: ``("ratio>=", x)``: median ratio at least x; ``("ratio<=", x)``:
    at most x (latency); ``("zero",)``: geventfork's total is 0;
    ``("zero-or-fewer",)``: 0, or fewer than gunicorn's; ``()``: no target.
    """

    section: str
    figure: str
    key: str
    fmt: str = ".0f"
    total: bool = False
    target: tuple = ()
    parts: tuple = ()  #: keys of counts shown as totals ``a/b/c`` in one cell


def rows() -> list:
    """Every row of the table, in order."""
    out = []
    targets = {"keepalive": 1.2, "close": 1.0, "slow": 1.1}
    for name, load in LOADS.items():
        title = f"{load.title}, {load.connections} conns"
        out += [
            Row(name, f"{title}: req/s", "req_per_s", target=("ratio>=", targets[name])),
            Row(name, f"{title}: latency p50 (ms)", "p50_ms", ".2f"),
            Row(name, f"{title}: latency p99 (ms)", "p99_ms", ".2f", target=("ratio<=", 1.0)),
            Row(name, f"{title}: errors (total)", "errors", "d", True, ("zero",)),
            Row(name, f"{title}: errors {ERROR_LABELS}", "", parts=ERROR_KINDS),
            Row(name, f"{title}: server died (runs)", "server_died", "d", True),
        ]
    reloaded = ("wrk_keepalive", "wrk_close", "python_keepalive")
    out += [
        Row("reload", "reload: requests answered (total)", "ok", "d", True),
        Row("reload", "reload: requests failed (total)", "failed", "d", True, ("zero-or-fewer",)),
        Row(
            "reload",
            "reload: failed, wrk keep-alive/wrk new conn./Python keep-alive",
            "",
            parts=tuple(f"{k}_failed" for k in reloaded),
        ),
        Row(
            "reload",
            "reload: Python keep-alive connections reopened",
            "python_keepalive_reopened",
            "d",
            True,
            ("zero",),
        ),
        Row("reload", "reload: clients idle 2.5-3.5 s: answered", "python_idle_ok", "d", True),
        Row(
            "reload",
            "reload: clients idle 2.5-3.5 s: failed",
            "python_idle_failed",
            "d",
            True,
            ("zero",),
        ),
        Row("reload", "reload: all workers replaced (runs)", "workers_replaced", "d", True),
        Row("reload", "reload: server died (runs)", "server_died", "d", True),
    ]
    return out


def table(results: dict, available: dict) -> str:
    """``results[(section, server)]`` (a list of per-run dicts) as a Markdown table."""
    header = ("figure", "geventfork", "gunicorn", "ratio", "target", "met")
    lines = [header]
    for row in rows():
        runs = {s: results.get((row.section, s), []) for s in SERVERS}
        if not any(runs.values()):
            continue  # a section not run
        if row.parts:
            cells = [_parts(row, runs[s]) if available[s] else "not available" for s in SERVERS]
            lines.append((row.figure, *cells, "", "", ""))
            continue
        values = {s: _aggregate(row, runs[s]) for s in SERVERS}
        cells = [_number(values[s], row.fmt) if available[s] else "not available" for s in SERVERS]
        ratio = _ratio(values["geventfork"], values["gunicorn"]) if not row.total else None
        lines.append(
            (
                row.figure,
                *cells,
                "" if ratio is None else f"{ratio:.2f}x",
                _target(row),
                _met(row, values, ratio),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rule = tuple("-" * w for w in widths)
    return "\n".join(
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |"
        for line in [lines[0], rule, *lines[1:]]
    )


def _parts(row: Row, runs: list) -> str:
    """The totals of ``row.parts`` over the runs, as ``a/b/c``; ``-`` without runs."""
    if not runs:
        return "-"
    return "/".join(str(sum(r.get(key, 0) for r in runs)) for key in row.parts)


def _aggregate(row: Row, runs: list) -> Optional[float]:
    values = [r[row.key] for r in runs if row.key in r]
    if not values:
        return None
    return sum(values) if row.total else statistics.median(values)


def _ratio(mine: Optional[float], theirs: Optional[float]) -> Optional[float]:
    if mine is None or theirs is None or theirs == 0:
        return None
    return mine / theirs


def _number(value: Optional[float], fmt: str) -> str:
    if value is None:
        return "-"
    return format(round(value) if fmt == "d" else value, fmt)


def _target(row: Row) -> str:
    if not row.target:
        return ""
    kind = row.target[0]
    if kind == "ratio>=":
        return f">= {row.target[1]}x gunicorn"
    if kind == "ratio<=":
        return "no worse than gunicorn"
    if kind == "zero":
        return "0"
    return "0, or fewer than gunicorn"


def _met(row: Row, values: dict, ratio: Optional[float]) -> str:
    if not row.target:
        return ""
    mine, theirs = values["geventfork"], values["gunicorn"]
    kind = row.target[0]
    if kind in ("zero", "zero-or-fewer"):
        if mine is None:
            return "n/a"
        met = mine == 0 or (kind == "zero-or-fewer" and theirs is not None and mine < theirs)
    elif ratio is None:
        return "n/a"
    elif kind == "ratio>=":
        met = ratio >= row.target[1]
    else:
        met = ratio <= row.target[1]
    return "met" if met else "NOT met"


# Running it all ------------------------------------------------------------------------


def parse_args(argv: list) -> argparse.Namespace:
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
    args.sections = _names(parser, args.sections, SECTIONS, GROUPS)
    args.servers = _names(parser, args.servers, SERVERS, {})
    return args


def _names(parser: argparse.ArgumentParser, text: str, known: tuple, groups: dict) -> list:
    """Expand a comma-separated list of names and groups, kept in ``known``'s order."""
    chosen = set()
    for name in filter(None, text.split(",")):
        if name not in known and name not in groups:
            parser.error(f"unknown name {name!r}: choose from {', '.join((*known, *groups))}")
        chosen.update(groups.get(name, (name,)))
    return [name for name in known if name in chosen]


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
    results = defaultdict(list)
    failures = []
    for number, section, name, (function, *arguments) in jobs:
        say(f"run {number}/{rounds}  {section:<9} {name:<10} ", end="")
        try:
            figures = function(*arguments)
        except BenchError as exc:
            failures.append(f"run {number}, {section}, {name}: {exc}")
            say(f"FAILED: {exc}")
            continue
        results[(section, name)].append(figures)
        say(_summary(figures))
    return results, failures


def _summary(figures: dict) -> str:
    if "req_per_s" in figures:
        return (
            f"{figures['req_per_s']:.0f} req/s, p50 {figures.get('p50_ms', 0):.2f} ms, "
            f"p99 {figures.get('p99_ms', 0):.2f} ms, errors {figures['errors']}"
            + (", SERVER DIED" if figures["server_died"] else "")
        )
    seen = "; ".join(figures["python_keepalive_seen"])
    return (
        f"{figures['ok']} answered, {figures['failed']} failed "
        f"(wrk keep-alive {figures['wrk_keepalive_failed']}, wrk close "
        f"{figures['wrk_close_failed']}, Python keep-alive {figures['python_keepalive_failed']}"
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


def slow_ceiling(results: dict) -> str:
    """A note on the slow route's ceiling, ``connections / SLOW`` req/s, and each server's share.

    No server answers more than one request per connection per 50 ms: near
    the ceiling, a ratio of rates says nothing of the servers.
    """
    load = LOADS["slow"]
    ceiling = load.connections / SLOW
    shares = []
    for name in SERVERS:
        rates = [r["req_per_s"] for r in results.get(("slow", name), [])]
        if rates:
            shares.append(f"{name} {statistics.median(rates) / ceiling:.0%}")
    if not shares:
        return ""
    return (
        f"slow route ceiling: {load.connections} connections / {SLOW} s = {ceiling:.0f} req/s "
        f"whatever the server; reached: {', '.join(shares)}"
    )


def say(text: str, end: str = "\n") -> None:
    """Progress, on stderr."""
    print(text, end=end, file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list) -> int:
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
