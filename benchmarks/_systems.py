"""The systems under test and one measurement of each: start fresh, measure, stop.

``node`` is Node's own example and IPC programs (``benchmarks/node/``),
``geventfork`` the priority example and ``benchmarks/geventfork_ipc/``, and
``floor`` the bare hand-off of ``benchmarks/floor/``. The IPC benchmarks
also run geventfork's programs with ``recv()`` and with pickle, and the
Python peers of ``benchmarks/peers_ipc/``: gipc and ``multiprocessing.Pipe``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass

from _console import BenchError
from _process_group import ProcessGroup

__all__ = [
    "Settings",
    "build_loadgen",
    "measure_handoff",
    "measure_ipc",
    "HANDOFF",
    "IPC",
    "COST",
    "ensure_gipc",
]

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HOST = "127.0.0.1"
#: Node's docs' special address: every benchmark client (127.0.0.1) is served
#: by the 'normal' child, as in the example as written.
SPECIAL_ADDRESS = "74.125.127.100"
_SERVER_ARGS = ["0", SPECIAL_ADDRESS, HOST]
_GEVENTFORK = [sys.executable, "-m", "geventfork"]

#: The hand-off servers: each prints "listening on HOST:PORT".
HANDOFF = {
    "node": ["node", os.path.join(HERE, "node", "parent.js"), *_SERVER_ARGS],
    "geventfork": [
        *_GEVENTFORK,
        os.path.join(ROOT, "examples", "priority", "parent.py"),
        *_SERVER_ARGS,
    ],
    "floor": [sys.executable, os.path.join(HERE, "floor", "parent.py"), *_SERVER_ARGS],
}
_GEVENTFORK_IPC = [*_GEVENTFORK, os.path.join(HERE, "geventfork_ipc", "parent.py")]
_PEERS = os.path.join(HERE, "peers_ipc")
#: The IPC benchmark programs: each takes ``BENCH ARGS...`` and prints a JSON
#: line. Node's and the first geventfork one speak JSON through a 'message'
#: listener; the others say how they differ in their names.
IPC = {
    "node": ["node", os.path.join(HERE, "node", "ipc_parent.js")],
    "geventfork": _GEVENTFORK_IPC,
    "geventfork-recv": [*_GEVENTFORK_IPC, "--receive", "recv"],
    "geventfork-pickle": [*_GEVENTFORK_IPC, "--serialization", "pickle"],
    "geventfork-recv-pickle": [
        *_GEVENTFORK_IPC,
        "--serialization",
        "pickle",
        "--receive",
        "recv",
    ],
    "gipc": [sys.executable, os.path.join(_PEERS, "gipc_parent.py")],
    "pipe": [sys.executable, os.path.join(_PEERS, "pipe_parent.py")],
    "pipe-gevent": [sys.executable, os.path.join(_PEERS, "pipe_parent.py"), "--gevent"],
}
#: The IPC programs that also measure start-up ('cost'): the peers' children
#: are forked or started otherwise, so their start-up compares with nothing here.
COST = ("node", "geventfork")
#: Seconds a server may take to print its address (Python starts slowly on a busy machine).
START_TIMEOUT = 30.0
#: Seconds an IPC benchmark program may run.
IPC_TIMEOUT = 180.0
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


@dataclass
class Settings:
    """How much work each measurement does."""

    duration: float = 3.0  #: seconds of load per hand-off measurement
    concurrency: int = 50
    timeout: float = 2.0  #: seconds a connection may take, connect() to EOF
    warmup: float = 1.0  #: seconds of silent load before each measurement
    #: The open-files limit (soft and hard) of the systems under test: the usual
    #: default soft limit, so that results do not depend on this machine's
    #: ``ulimit -n`` (Node's example leaks an fd per request-sending client and
    #: collapses at the limit, whatever it is). 0 keeps the machine's.
    nofile: int = 1024
    stream: int = 200_000
    pingpong: int = 20_000
    large: tuple = ((1 << 20, 32), (16 << 20, 4))  #: (size, count) pairs
    cost: int = 3  #: children forked per cost measurement

    @classmethod
    def quick(cls) -> Settings:
        """About a quarter of the work, for trying the harness out."""
        return cls(
            duration=1.0,
            warmup=0.3,
            stream=50_000,
            pingpong=5_000,
            large=((1 << 20, 8), (16 << 20, 2)),
            cost=1,
        )


def ensure_gipc() -> None:
    """Make gipc importable by this Python, installing it from PyPI with pip if missing.

    It is installed into the running interpreter's environment, next to the
    gevent under test, which pip is told to keep as it is.

    Raises:
        BenchError: gipc is missing and pip could not install it (the reason).
    """
    if _imports("gipc"):
        return
    import gevent

    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "gipc",
        f"gevent=={gevent.__version__}",
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"{' '.join(cmd[2:])}: {exc}") from None
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise BenchError(f"{' '.join(cmd[2:])} failed: {lines[-1] if lines else done.returncode}")
    if not _imports("gipc"):
        raise BenchError("pip installed gipc, but it does not import")


def _imports(module: str) -> bool:
    """Whether this Python imports ``module``, asked of a fresh interpreter."""
    cmd = [sys.executable, "-c", f"import {module}"]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def build_loadgen(workdir: str) -> str:
    """Compile loadgen.c into ``workdir``; return the binary's path.

    Raises:
        BenchError: gcc failed.
    """
    binary = os.path.join(workdir, "loadgen")
    cmd = ["gcc", "-O2", "-o", binary, os.path.join(HERE, "loadgen.c")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise BenchError(f"building loadgen failed:\n{done.stderr}")
    return binary


def measure_handoff(system: str, mode: str, loadgen: str, settings: Settings, workdir: str) -> dict:
    """Start a fresh ``system`` server, warm it up, load it in ``mode``, stop it.

    Returns:
        loadgen's figures, plus the server's CPU use and whether it died.

    Raises:
        BenchError: the server did not start or did not serve the warm-up.
    """
    server = ProcessGroup(
        HANDOFF[system], *_log_paths(workdir, f"{system}-{mode}"), nofile=settings.nofile or None
    )
    try:
        port = _wait_listening(server)
        warmup = _loadgen(loadgen, port, settings, workdir, "silent", duration=settings.warmup)
        if not warmup["ok"]:
            raise BenchError(f"{system} served none of the warm-up connections: {warmup}")
        before = server.cpu_seconds()
        result = _loadgen(loadgen, port, settings, workdir, mode, duration=settings.duration)
        after = server.cpu_seconds()
        result["server_died"] = int(not server.running())
        if result["server_died"]:
            result["died_with"] = server.error_tail(30)
        result["open_fds"] = server.open_fds()
        result.update(_cpu_figures(server.pgid, before, after, result))
        return result
    except BenchError as exc:
        raise BenchError(f"{exc}\n{server.error_tail()}") from None
    finally:
        server.stop()


def measure_ipc(system: str, args: list, settings: Settings, workdir: str) -> dict:
    """Run one IPC benchmark program; return its figures.

    Raises:
        BenchError: it failed, timed out, or printed no figures.
    """
    name = f"{system}-ipc-{'-'.join(map(str, args))}"
    program = ProcessGroup(
        [*IPC[system], *map(str, args)], *_log_paths(workdir, name), nofile=settings.nofile or None
    )
    try:
        status = program.wait(IPC_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{system} {args} still running after {IPC_TIMEOUT} s") from None
    finally:
        program.stop()
    figures = _last_json(program.output())
    if status or figures is None or figures.get("ok") is False:
        raise BenchError(
            f"{system} {args} exited with {status}, printed {figures}\n{program.error_tail()}"
        )
    return figures


def _loadgen(
    loadgen: str, port: int, settings: Settings, workdir: str, mode: str, **amount: float
) -> dict:
    """Run loadgen against ``port``; return its figures (plus its CPU share)."""
    ((what, value),) = amount.items()  # duration=S or connections=N
    argv = [
        loadgen,
        HOST,
        str(port),
        f"--{what}",
        str(value),
        "--mode",
        mode,
        "--concurrency",
        str(settings.concurrency),
        "--timeout",
        str(settings.timeout),
    ]
    group = ProcessGroup(argv, *_log_paths(workdir, "loadgen"))
    try:
        status = group.wait(value + settings.timeout + 60 if what == "duration" else 600)
    except subprocess.TimeoutExpired:
        raise BenchError("loadgen did not finish") from None
    finally:
        group.stop()
    figures = _last_json(group.output())
    if status or figures is None:
        raise BenchError(f"loadgen exited with {status}: {group.error_tail()}")
    elapsed = figures["elapsed_s"] or 1e-9
    figures["loadgen_user_pct"] = 100 * figures["cpu_user_s"] / elapsed
    figures["loadgen_sys_pct"] = 100 * figures["cpu_sys_s"] / elapsed
    return figures


def _wait_listening(server: ProcessGroup) -> int:
    """Wait for the "listening on HOST:PORT" line; return the port.

    Raises:
        BenchError: the server exited or said nothing in time.
    """
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        found = _LISTENING.search(server.output())
        if found:
            return int(found.group(2))
        if not server.running():
            raise BenchError(f"{server.argv[:3]} exited with {server.popen.returncode}")
        time.sleep(0.02)
    raise BenchError(f"{server.argv[:3]} printed no address in {START_TIMEOUT} s")


def _cpu_figures(leader: int, before: dict, after: dict, result: dict) -> dict:
    """CPU the server used during the load: % of one core, and µs per served connection."""

    def used(pids):
        return sum(after[p] - before.get(p, 0.0) for p in pids)

    parent = used(p for p in after if p == leader)
    children = used(p for p in after if p != leader)
    served = max(result["ok"], 1)
    return {
        "server_cpu_pct": 100 * (parent + children) / result["elapsed_s"],
        "parent_cpu_us": 1e6 * parent / served,
        "children_cpu_us": 1e6 * children / served,
    }


def _last_json(text: str):
    """The last line of ``text`` that parses as a JSON object, or None."""
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def _log_paths(workdir: str, name: str) -> tuple:
    """Fresh stdout and stderr file paths for one process."""
    stamp = f"{name}-{time.monotonic_ns()}"
    return os.path.join(workdir, f"{stamp}.out"), os.path.join(workdir, f"{stamp}.err")
