"""Constants and small helpers shared by conftest.py and the test modules.

Each helper has one home here; a test module defines only what is its own.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import gevent
from gevent.event import AsyncResult
from gevent.queue import Empty, Queue

#: Seconds any single step of a test may take (every wait is bounded).
TIMEOUT = 5
#: The scripts the process tests start, one behaviour each.
CHILDREN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "children")
KiB = 1024
MiB = 1024 * KiB


# -- waiting --------------------------------------------------------------------


def wait_until(predicate, what, timeout=TIMEOUT):
    """Yield to the hub until ``predicate()`` is true; fail after ``timeout`` s.

    For state that no event announces.  The failure names ``what``.
    """
    with gevent.Timeout(timeout, AssertionError(f"timed out waiting for {what}")):
        while not predicate():
            gevent.sleep(0.001)


def poll(predicate, timeout):
    """Call ``predicate`` every 50 ms for up to ``timeout`` s; return its last result.

    For a caller that reports the failure itself (with what it found).
    """
    with gevent.Timeout(timeout, False):
        while not predicate():
            gevent.sleep(0.05)
    return predicate()


# -- events and queues ----------------------------------------------------------


def inbox(emitter, handles=False):
    """A queue that gets every message ``emitter`` receives.

    Args:
        emitter: what emits ``'message'`` (a ``ChildProcess``, ``process``).
        handles: queue ``(message, handle)`` pairs instead of messages alone.
    """
    queue = Queue()
    if handles:
        emitter.on("message", lambda message, handle: queue.put((message, handle)))
    else:
        emitter.on("message", lambda message, handle: queue.put(message))
    return queue


def take(queue, count=1, what="item"):
    """The next ``count`` items of ``queue``, as a list, waiting at most ``TIMEOUT`` in all.

    Raises:
        AssertionError: naming ``what``, if they do not all come in time.
    """
    items = []
    with gevent.Timeout(TIMEOUT, False):
        while len(items) < count:
            items.append(queue.get())
    if len(items) < count:
        raise AssertionError(f"{len(items)} of {count} {what} within {TIMEOUT} s")
    return items


def take_one(queue, what="item"):
    """The next item of ``queue``, waiting at most ``TIMEOUT``; the failure names ``what``."""
    try:
        return queue.get(timeout=TIMEOUT)
    except Empty:
        raise AssertionError(f"no {what} within {TIMEOUT} s") from None


def next_event(emitter, event):
    """An ``AsyncResult`` set to the arguments of ``emitter``'s next ``event``."""
    result = AsyncResult()
    emitter.once(event, lambda *args: result.set(args))
    return result


def recorder(emitter, *events):
    """A queue of ``(event, *args)`` for each of ``events`` on ``emitter``, in order."""
    queue = Queue()
    for event in events:
        emitter.on(event, lambda *args, event=event: queue.put((event, *args)))
    return queue


def items_in(queue):
    """What ``queue`` holds now, as a list (does not wait)."""
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


@contextmanager
def hub_errors(
    on_error: Optional[Callable[[BaseException], Any]] = None, show: bool = False
) -> Iterator[list]:
    """Record the errors this process's hub is given while the block runs.

    A raising listener or greenlet ends up in ``hub.handle_error``, which
    prints a traceback; this records the exception instead.  ``GreenletExit``
    and ``SystemExit`` are no errors and go to the hub as usual.

    Args:
        on_error: called with each error; by default it is appended to the
            list the block gets.
        show: also let the hub print each error, as it would without us.

    Yields:
        The list of recorded errors (empty if ``on_error`` is given).
    """
    hub = gevent.get_hub()
    errors: list = []
    record = errors.append if on_error is None else on_error
    original = hub.handle_error

    def handle_error(context, kind, value, tb):
        if kind is None or issubclass(kind, hub.NOT_ERROR):
            return original(context, kind, value, tb)
        record(value)
        if show:
            return original(context, kind, value, tb)
        return None

    hub.handle_error = handle_error
    try:
        yield errors
    finally:
        hub.handle_error = original


# -- sockets --------------------------------------------------------------------


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


def ask(port, request=b"", source=None, total=TIMEOUT):
    """Connect to ``127.0.0.1:port``, send ``request``, return everything up to EOF.

    Each socket operation is bounded by ``TIMEOUT``.

    Args:
        port: where to connect.
        request: what to send first (nothing if empty).
        source: the local address to connect from (any if None).
        total: the bound on reading the whole answer; None leaves only the
            per-operation bound.
    """
    with socket.socket() as sock:
        sock.settimeout(TIMEOUT)
        if source is not None:
            sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        if request:
            sock.sendall(request)
        return read_to_eof(sock, timeout=total)


def reset(sock):
    """Close ``sock`` so that the peer gets a reset (RST), not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def closed_socket(*_ignored):
    """A socket object that is already closed (a handle no one can send)."""
    sock = socket.socket()
    sock.close()
    return sock


# -- processes and their fds ----------------------------------------------------


def python_env():
    """Our environment, plus what a fresh interpreter needs to import this geventfork."""
    import geventfork  # here, so that conftest.py's import of this module does not load it

    home = os.path.dirname(os.path.dirname(os.path.abspath(geventfork.__file__)))
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": home + (os.pathsep + path if path else "")}


def fd_table(pid="self"):
    """Map each fd open in process ``pid`` to what it points at.

    The fd this listing itself uses (when ``pid`` is us) is left out.
    """
    table = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            table[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:  # closed meanwhile, e.g. the listing's own fd
            pass
    listing = f"/proc/{os.getpid()}/fd"
    return {fd: target for fd, target in table.items() if target != listing}


def fd_count(pid="self"):
    """How many fds process ``pid`` has open (not counting this count's own)."""
    ours = pid in ("self", os.getpid())
    return len(os.listdir(f"/proc/{pid}/fd")) - (1 if ours else 0)


def proc_stat(pid):
    """The fields of ``/proc/PID/stat`` after the command name, or None if ``pid`` is gone.

    ``fields[0]`` is the state letter (``Z``: zombie), ``fields[1]`` the
    parent's pid, ``fields[2]`` the process group.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and ")"


def children_of(pid=None, templates=False):
    """Map each child process of ``pid`` (default: us) to its state letter, by pid.

    The fork server's templates (which live as long as their parent) are left
    out unless ``templates`` is true.
    """
    pid = os.getpid() if pid is None else pid
    found = {}
    for name in sorted(os.listdir("/proc")):
        if name.isdigit():
            fields = proc_stat(name)
            if fields is not None and int(fields[1]) == pid:
                if templates or not is_template(name):
                    found[int(name)] = fields[0]
    return dict(sorted(found.items()))


#: What a fork server's template has on its command line.
TEMPLATE_MARK = "geventfork._template"


def is_template(pid):
    """Whether ``pid`` is a fork server's template process."""
    return TEMPLATE_MARK in cmdline(pid)


def cmdline(pid):
    """The command line of ``pid`` as one string (``"?"`` once it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def gone(pid):
    """Whether ``pid`` has exited (a zombie nobody reaped counts as gone)."""
    fields = proc_stat(pid)
    return fields is None or fields[0] == "Z"


def wait_gone(pid, timeout=TIMEOUT):
    """Poll until ``pid`` has exited; return whether it did within ``timeout``."""
    return poll(lambda: gone(pid), timeout)


def kill_quietly(pid):
    """SIGKILL ``pid``, if it still exists."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
