"""The examples, run as users run them: ``python -m geventfork examples/...``.

Each example starts in a process group of its own on port 0, says which
port it got on stdout, and serves 1,000 connections in a row, every reply
complete and none reset, under a deadline; its whole process group is
killed at the end.  The priority example's self-test (what tox's
``run-module`` env runs) must pass too.
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections import Counter

import gevent
import pytest

from helpers import TIMEOUT, ask, python_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
#: Connections driven through each example.
CONNECTIONS = 1000
#: Seconds each example may take, from start to the last reply.
DEADLINE = 30
SPECIAL_ADDRESS = "127.0.0.2"


def _start(popen, script, *args, **options):
    proc = subprocess.Popen(
        [sys.executable, "-m", "geventfork", os.path.join(EXAMPLES, script), *args],
        cwd=ROOT,
        env=python_env(),
        stdout=subprocess.PIPE,
        start_new_session=True,
        **options,
    )
    popen.append(proc)
    return proc


def _kill_group(proc):
    """SIGTERM the example's process group, wait for its leader, SIGKILL the rest."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        if sig == signal.SIGTERM:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=TIMEOUT)


@pytest.fixture
def example(popen):
    """``example(script, *args)``: start it; return ``(process, port)``."""
    started = []

    def run(script, *args):
        proc = _start(popen, script, *args)
        started.append(proc)
        with gevent.Timeout(10, AssertionError(f"{script} never said where it listens")):
            line = proc.stdout.readline().decode()
        match = re.search(r"listening on [\d.]+:(\d+)", line)
        assert match, f"{script} said {line!r}"
        return proc, int(match.group(1))

    yield run
    for proc in started:
        _kill_group(proc)


def drive(port, requests):
    """Send each ``(request, source)`` on a new connection; yield each reply."""
    with gevent.Timeout(
        DEADLINE, AssertionError(f"{CONNECTIONS} connections took over {DEADLINE} s")
    ):
        for i, (request, source) in enumerate(requests):
            try:
                yield ask(port, request, source, total=None)  # DEADLINE bounds them all
            except (ConnectionResetError, BrokenPipeError) as exc:
                pytest.fail(f"connection {i} from {source} was reset: {exc!r}")


def test_priority_example(example):
    proc, port = example("priority/parent.py", "0", SPECIAL_ADDRESS, "127.0.0.1")
    sources = ["127.0.0.1", SPECIAL_ADDRESS] * (CONNECTIONS // 2)
    request = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"  # never read: end() must not reset
    replies = Counter(drive(port, ((request, source) for source in sources)))
    assert replies == {
        b"Request handled with normal priority": CONNECTIONS // 2,
        b"Request handled with special priority": CONNECTIONS // 2,
    }
    assert proc.poll() is None


def test_legacy_example(example):
    proc, port = example("legacy/parent.py", "0")
    request = b"GET / HTTP/1.0\r\nHost: example\r\n\r\n"
    served = Counter()
    for reply in drive(port, [(request, "127.0.0.1")] * CONNECTIONS):
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 OK\r\n"), reply
        assert int(re.search(rb"\r\nContent-Length: (\d+)", head).group(1)) == len(body), reply
        served[re.match(rb"hello from (worker-\d) ", body).group(1)] += 1
    assert served == {b"worker-1": CONNECTIONS // 2, b"worker-2": CONNECTIONS // 2}  # round-robin
    assert proc.poll() is None


def test_priority_selftest(popen):
    proc = _start(popen, "priority/selftest.py", stderr=subprocess.STDOUT)
    try:
        with gevent.Timeout(DEADLINE, AssertionError("the self-test did not finish")):
            output = proc.communicate()[0].decode()
    finally:
        _kill_group(proc)
    assert proc.returncode == 0, output
    assert "20 of 20 clients served as expected" in output, output


def test_pool_example(example):
    proc, port = example("pool/parent.py", "0", SPECIAL_ADDRESS, "127.0.0.1")
    sources = ["127.0.0.1", SPECIAL_ADDRESS] * (CONNECTIONS // 2)
    request = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"
    replies = Counter(drive(port, ((request, source) for source in sources)))
    assert replies == {
        b"Request handled with normal priority": CONNECTIONS // 2,
        b"Request handled with special priority": CONNECTIONS // 2,
    }
    proc.send_signal(signal.SIGTERM)  # the workers are idle: it exits at once, and cleanly
    assert proc.wait(timeout=TIMEOUT) == 0
