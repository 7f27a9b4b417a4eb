"""``serve.py``'s measurements: wrk's loads, and requests failed while a server reloads."""

from __future__ import annotations

import http.client
import os
import random
import re
import signal
import subprocess
import threading
import time

from _process_group import ProcessGroup
from _console import BenchError
from _serve_setup import ERROR_KINDS, Load, Server, Settings, start

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


class Wrk:
    """One wrk process, started at once, its output read at the end.

    Args:
        argv: the command line (``wrk_argv``).
    """

    def __init__(self, argv: list) -> None:
        self.argv = argv
        self.duration = int(next(a for a in argv if a.startswith("-d"))[2:-1])
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def result(self) -> dict:
        """Wait for wrk to end; return its figures (see ``parse_wrk``).

        Raises:
            BenchError: wrk failed, did not end, or printed no rate.
        """
        try:
            out, err = self.popen.communicate(timeout=self.duration + 60)
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise BenchError(f"wrk did not end: {' '.join(self.argv)}") from exc
        if self.popen.returncode:
            raise BenchError(f"wrk failed ({self.popen.returncode}): {err.strip()}")
        return parse_wrk(out)

    def stop(self) -> None:
        """Kill wrk if it still runs (on failure or Ctrl-C), and reap it."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.communicate()


def run_wrk(argv: list) -> dict:
    """Run wrk to its end and return its figures (see ``Wrk.result``)."""
    wrk = Wrk(argv)
    try:
        return wrk.result()
    finally:
        wrk.stop()


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(text: str) -> dict:
    """Figures from wrk's ``--latency`` output.

    Returns:
        ``req_per_s``, ``requests`` (complete responses, any status),
        ``p50_ms``, ``p99_ms``, the errors
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
    """A fresh server, ``settings.warmup`` s of the load, then the measured wrk run.

    Besides wrk's figures: ``cpu_us_per_request``, the CPU time (user and
    system) the server's processes spent during the measured run per
    response (``requests``), from /proc: steadier than the rates on a shared
    machine, since another process's load slows both alike.
    """
    group, port = start(server, workdir, tag)
    try:
        if settings.warmup:
            run_wrk(wrk_argv(load, port, settings.warmup, settings.wrk_threads))
        before = group.cpu_seconds()
        figures = run_wrk(wrk_argv(load, port, settings.duration, settings.wrk_threads))
        spent = _cpu_spent(before, group.cpu_seconds())
        if figures["requests"]:
            figures["cpu_us_per_request"] = spent / figures["requests"] * 1e6
        figures["server_died"] = int(not group.running())
        return figures
    finally:
        group.stop()


def _cpu_spent(before: dict, after: dict) -> float:
    """CPU seconds spent between two ``ProcessGroup.cpu_seconds()`` readings.

    A process that started meanwhile counts in full; one that exited meanwhile
    is left out (none does under these loads).
    """
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def _templates(pids: set) -> set:
    """Those of ``pids`` that are geventfork's fork-server templates."""
    found = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"geventfork._template" in f.read():
                    found.add(pid)
        except OSError:
            pass
    return found


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
    clients = {
        "python_keepalive": KeepAliveClients(port, settings.reload_clients, (0.05, 0.5)),
        "python_idle": KeepAliveClients(port, settings.idle_clients, (2.5, 3.5)),
    }
    running: dict = {}
    try:
        pids_before = set(group.cpu_seconds())
        running = {kind: Wrk(argv) for kind, argv in wrks.items()}
        for c in clients.values():
            c.start()
        time.sleep(1)
        _hups(group, settings)
        results = {kind: wrk.result() for kind, wrk in running.items()}
        for c in clients.values():
            c.stop()
        figures = _reload_figures(results, clients)
        figures["server_died"] = int(not group.running())
        # The fork server's template lives on across reloads: not a worker.
        figures["workers_replaced"] = int(
            not (set(group.cpu_seconds()) - {group.popen.pid} - _templates(pids_before))
            & pids_before
        )
        return figures
    finally:
        for wrk in running.values():
            wrk.stop()
        for c in clients.values():
            c.stop()
        group.stop()


def _hups(group: ProcessGroup, settings: Settings) -> None:
    """SIGHUP to the server's parent ``settings.hups`` times, ``hup_interval`` s apart."""
    for number in range(settings.hups):
        if not group.running():
            return
        os.kill(group.popen.pid, signal.SIGHUP)
        if number + 1 < settings.hups:
            time.sleep(settings.hup_interval)


def _reload_figures(results: dict, clients: dict) -> dict:
    """The reload section's figures from wrk's results and the Python clients.

    ``ok`` and ``failed`` sum every load but the idle clients (``python_idle_*``).
    """
    figures: dict = {}
    for kind, outcome in results.items():
        # wrk's "requests" are complete responses, whatever their status; its
        # socket errors are requests that got none (a timeout may yet get one).
        figures[f"{kind}_ok"] = outcome["requests"] - outcome["non_2xx"]
        figures[f"{kind}_failed"] = outcome["errors"]
        # Which kind (connect/read/write/timeout/non-2xx), to tell a refused
        # connection from a reset one when a reload loses any.
        figures[f"{kind}_kinds"] = "/".join(str(outcome.get(k, 0)) for k in ERROR_KINDS)
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
        """One client's loop, until ``stop``."""
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
