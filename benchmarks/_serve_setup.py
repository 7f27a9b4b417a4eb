"""``serve.py``'s servers: the venv they run from, their command lines, one started and stopped."""

from __future__ import annotations

import http.client
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from _console import BenchError, checkout, machine, output, say
from _process_group import ProcessGroup

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
    """``args`` with ``{port}`` replaced."""
    return [a.format(port=port) for a in args]


def _gunicorn_extra(python: str) -> list:
    """``--no-control-socket`` where gunicorn has one (23+).

    The control socket is an admin interface served by a thread of the
    master, never on a request's path; by default every gunicorn of the
    machine binds the same ``~/.gunicorn/gunicorn.ctl``, which concurrent
    runs would take from each other.
    """
    help_text = output([python, "-m", "gunicorn", "--help"])
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
    """Run one set-up command, its output appended to ``log_path``.

    Raises:
        BenchError: it failed (with the log's last lines).
    """
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
        "import importlib.util as u\n"
        "spec = u.find_spec('geventfork')\n"
        "where = spec.submodule_search_locations[0] if spec else 'none'\n"
        "print(f'Python {sys.version.split()[0]} ({sys.executable}), '"
        " + ', '.join(f'{n} {v(n)}' for n in names) + f' (imported from {where})')\n"
    )
    packages = output([python, "-c", code]) or f"{python}: cannot tell"
    wrk = output(["wrk", "-v"]).splitlines()
    return (
        f"{packages}; this checkout {checkout()}; "
        f"{wrk[0].split(' Copyright')[0] if wrk else 'wrk ?'}; {machine()}"
    )


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
