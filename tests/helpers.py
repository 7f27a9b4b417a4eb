"""Constants and small helpers shared by conftest.py and the test modules."""
import os
import signal

import gevent
from gevent.event import AsyncResult
from gevent.queue import Queue

#: Seconds any single step of a test may take (every wait is bounded).
TIMEOUT = 5
#: The scripts the process tests start, one behaviour each.
CHILDREN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "children")
KiB = 1024
MiB = 1024 * KiB


def wait_until(predicate, what, timeout=TIMEOUT):
    """Yield to the hub until ``predicate()`` is true; fail after ``timeout`` s.

    For state that no event announces.  The failure names ``what``.
    """
    with gevent.Timeout(timeout, AssertionError(f"timed out waiting for {what}")):
        while not predicate():
            gevent.sleep(0.001)


def read_to_eof(sock, timeout=TIMEOUT):
    """Everything ``sock`` receives until the peer's EOF.

    Fails after ``timeout`` seconds in all; with None, only the socket's own
    timeout bounds each read.
    """
    chunks = []
    with gevent.Timeout(timeout, AssertionError(f"no EOF within {timeout} s")):
        while True:
            chunk = sock.recv(256 * KiB)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def inbox(emitter):
    """A queue that gets every message ``emitter`` receives."""
    queue = Queue()
    emitter.on("message", lambda message, handle: queue.put(message))
    return queue


def take(queue, count=1):
    """The next ``count`` items of ``queue``, waiting at most ``TIMEOUT`` in all."""
    with gevent.Timeout(TIMEOUT):
        return [queue.get() for _ in range(count)]


def next_event(emitter, event):
    """An ``AsyncResult`` set to the arguments of ``emitter``'s next ``event``."""
    result = AsyncResult()
    emitter.once(event, lambda *args: result.set(args))
    return result


def python_env():
    """Our environment, plus what a fresh interpreter needs to import this geventfork."""
    import geventfork  # here, so that conftest.py's import of this module does not load it

    home = os.path.dirname(os.path.dirname(os.path.abspath(geventfork.__file__)))
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": home + (os.pathsep + path if path else "")}


def gone(pid):
    """Whether ``pid`` has exited (a zombie nobody reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def wait_gone(pid, timeout=TIMEOUT):
    """Poll until ``pid`` has exited; return whether it did within ``timeout``."""
    with gevent.Timeout(timeout, False):
        while not gone(pid):
            gevent.sleep(0.02)
    return gone(pid)


def kill_quietly(pid):
    """SIGKILL ``pid``, if it still exists."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
