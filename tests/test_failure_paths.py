"""Hand-offs that fail, end to end: the priority example with a dead child, and
the priority example at an open-files limit of 64.

The example runs as users run it (``python -m geventfork``, in a process
group of its own, on port 0). Each failure must end its socket: every client
gets an answer or a clean EOF within a bound, and the parent's fd count in
``/proc/PID/fd`` comes back to where it was.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys

import gevent
import pytest

from geventfork.errors import ProtocolError
from helpers import (
    TIMEOUT,
    ask,
    children_of,
    cmdline,
    fd_count,
    next_event,
    python_env,
    wait_gone,
    wait_until,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARENT = os.path.join(ROOT, "examples", "priority", "parent.py")
NORMAL = b"Request handled with normal priority"
#: What each client sends (the child never reads it).
REQUEST = b"GET / HTTP/1.0\r\n\r\n"


def limit_fds(limit: int):
    """A ``preexec_fn`` setting the open-files limit, soft and hard (children inherit it)."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


@pytest.fixture
def priority(popen):
    """``priority(nofile=None)``: start the example; return ``(process, port, stderr)``."""
    started = []

    def start(nofile: int | None = None) -> tuple:
        proc = subprocess.Popen(
            [sys.executable, "-m", "geventfork", PARENT, "0", "127.0.0.2", "127.0.0.1"],
            cwd=ROOT,
            env=python_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=limit_fds(nofile) if nofile else None,
        )
        popen.append(proc)
        started.append(proc)
        with gevent.Timeout(10, AssertionError("the example never said where it listens")):
            line = proc.stdout.readline().decode()
        port = int(re.search(r":(\d+)$", line.strip()).group(1))
        wait_until(lambda: len(children_of(proc.pid)) == 2, "both children started")
        return proc, port

    yield start
    for proc in started:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=TIMEOUT)


def test_a_dead_child_costs_its_clients_an_eof_not_a_hang_or_an_fd(priority):
    proc, port = priority()
    assert ask(port, REQUEST) == NORMAL
    (normal,) = [pid for pid in children_of(proc.pid) if cmdline(pid).endswith(" normal")]
    os.kill(normal, signal.SIGKILL)
    assert wait_gone(normal)
    wait_until(lambda: len(children_of(proc.pid)) == 1, "the parent reaped the dead child")
    before = fd_count(proc.pid)
    replies = [ask(port, REQUEST) for _ in range(100)]  # each bounded by ask's deadline
    assert replies == [b""] * 100
    wait_until(lambda: fd_count(proc.pid) <= before, "the parent's fds back to where they were")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=TIMEOUT)
    stderr = proc.stderr.read().decode()
    assert "Traceback" not in stderr, stderr
    assert len(stderr.splitlines()) <= 100 + 5, "more than one line per failed hand-off"


def test_at_an_fd_limit_of_64_every_client_is_served_or_closed(priority):
    """200 clients at once against a parent and children limited to 64 fds: the
    children's fd tables fill, hand-offs are lost (``MSG_CTRUNC``) and accepts
    fail (``EMFILE``); every client still gets its answer or an EOF, and the
    20 that come afterwards, one by one, are all served."""
    proc, port = priority(nofile=64)
    clients = [gevent.spawn(_ask_or_error, port) for _ in range(200)]
    finished = gevent.joinall(clients, timeout=6 * TIMEOUT)
    assert len(finished) == 200, "a client hung"
    results = [client.value for client in clients]
    served = results.count(NORMAL)
    closed = results.count(b"")
    print(f"at 64 fds: {served} served, {closed} closed of 200")
    assert served + closed == 200, [r for r in results if r not in (NORMAL, b"")][:5]
    assert served > 0
    later = [ask(port, REQUEST) for _ in range(20)]
    assert later == [NORMAL] * 20
    wait_until(lambda: fd_count(proc.pid) < 20, "the parent's fds back to a handful")


def _ask_or_error(port: int) -> object:
    try:
        return ask(port, REQUEST)
    except OSError as exc:  # a reset or refusal is a failure the test reports
        return exc


def test_a_pickle_frame_from_a_json_child_runs_no_code_in_the_parent(spawn_child, tmp_path):
    marker = tmp_path / "ran"
    child = spawn_child("attack.py", "pickle", str(marker))
    errors = []
    child.on("error", errors.append)
    disconnected = next_event(child, "disconnect")
    assert disconnected.get(timeout=TIMEOUT) == ()
    assert len(errors) == 1 and isinstance(errors[0], ProtocolError), errors
    assert "codec 2 (pickle)" in str(errors[0])
    assert child.wait(timeout=TIMEOUT) == 0
    assert not marker.exists(), "the child's pickle ran in the parent"


def test_fds_a_child_attaches_mid_frame_are_not_kept(spawn_child):
    before = fd_count(os.getpid())
    child = spawn_child("attack.py", "fds", 1000)
    errors = []
    child.on("error", errors.append)
    assert next_event(child, "disconnect").get(timeout=TIMEOUT) == ()
    assert child.wait(timeout=TIMEOUT) == 0
    assert len(errors) == 1 and "middle of a frame" in str(errors[0]), errors
    # The parent never held more than the batch it was closing.
    wait_until(lambda: fd_count(os.getpid()) <= before, "the parent's fds back")
