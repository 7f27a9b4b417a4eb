"""Fixtures shared by the tests: process registries and leak checks.

The tests run patched, as users' code does under ``python -m geventfork``.

Fixtures:
    children: a list; every ``geventfork.ChildProcess`` appended to it is
        stopped at the end of the test (SIGTERM, ``wait(5)``, SIGKILL).
    spawn_child(script, *args, **options): ``geventfork.fork()`` a script
        from ``tests/children/``, registered in ``children``.
    popen: a list; the same teardown for ``subprocess.Popen`` objects, whose
        pipes are closed too.
    server: a listening ``net.Server`` on 127.0.0.1 that reads nothing.
    no_leaked_children (autouse): fails the test if a child process of this
        one is still alive 3 s after the teardown above.
    no_leaked_fds (autouse): fails the test if it leaves file descriptors
        open (bounded wait, as gevent defers some closes to the next loop
        turn).  Opt out with ``@pytest.mark.allow_fd_leak``.

Teardown runs in this order: ``children``/``popen`` stop their processes,
then the child-process check, then the fd check.  Each registry requests the
check that must run after it, and pytest tears fixtures down in reverse.
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import pytest  # noqa: E402
from helpers import CHILDREN_DIR, children_of, cmdline, fd_table  # noqa: E402

from geventfork import _forkserver  # noqa: E402

#: How long a process gets to exit after SIGTERM, then after SIGKILL.
STOP_TIMEOUT = 5.0
#: How long leaked children and fds get to go away after teardown.
CHILD_GRACE = 3.0
FD_GRACE = 2.0
#: What ``/proc/self/fd`` shows for an epoll fd (the hub's loop).
EPOLL = "anon_inode:[eventpoll]"


def _count(table, target):
    return sum(1 for t in table.values() if t == target)


def _settle(check, grace):
    """Call ``check()`` until it returns something falsy or ``grace`` runs out.

    Yields to the hub between calls, so deferred closes and child reaping
    happen.  Returns the last result.
    """
    deadline = time.monotonic() + grace
    while True:
        result = check()
        if not result or time.monotonic() >= deadline:
            return result
        gevent.sleep(0.05)


# -- leak checks ----------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _warm_hub():
    """Create the hub and its signal/child machinery before any snapshot.

    libev opens fds of its own the first time it waits on a child; that is
    not the test's leak.
    """
    subprocess.run(["true"], check=True)
    gevent.sleep(0)


@pytest.fixture(autouse=True)
def no_leaked_fds(request, _warm_hub):
    """Fail the test if it leaves fds open that were not open before it."""
    before = fd_table()
    yield
    if request.node.get_closest_marker("allow_fd_leak"):
        return

    def leaked():
        now = fd_table()
        left = {fd: t for fd, t in now.items() if before.get(fd) != t}
        # libev closes its epoll fd and opens a new one (often under another
        # number) when it sees an fd reused under a watcher: not a leak
        # unless there are more of them than before.
        if _count(now, EPOLL) <= _count(before, EPOLL):
            left = {fd: t for fd, t in left.items() if t != EPOLL}
        # The fork server's templates outlive tests, as they outlive fork()s.
        templates = {fd for _pid, fd in _forkserver.templates()}
        return {fd: t for fd, t in left.items() if fd not in templates}

    left = _settle(leaked, FD_GRACE)
    if left:
        listing = ", ".join(f"{fd} -> {t}" for fd, t in sorted(left.items()))
        pytest.fail(f"leaked file descriptors: {listing}", pytrace=False)


@pytest.fixture(autouse=True)
def no_leaked_children(no_leaked_fds):
    """Fail the test if a child process of ours outlives it (zombies included).

    A zombie that the hub reaps within the grace period is fine.  Leftovers
    are killed and reaped, so one test's leak does not fail the next.
    """
    yield
    left = _settle(children_of, CHILD_GRACE)
    if not left:
        return
    report = "; ".join(f"pid {pid} [{state}] {cmdline(pid)}" for pid, state in left.items())
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ChildProcessError, ProcessLookupError):
            pass
    pytest.fail(f"child processes left running: {report}", pytrace=False)


# -- process registries ---------------------------------------------------


def _running(proc):
    if hasattr(proc, "poll"):  # subprocess.Popen
        return proc.poll() is None
    return proc.exit_code is None and proc.signal_code is None  # ChildProcess


def _signal(proc, sig):
    try:
        if hasattr(proc, "send_signal"):
            proc.send_signal(sig)
        else:
            proc.kill(sig)
    except ProcessLookupError:
        pass


def _stop(proc):
    """SIGTERM, wait, SIGKILL, wait; then close the process's pipes."""
    if proc.pid is not None:
        if _running(proc):
            _signal(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _stop_all(procs):
    errors = []
    for proc in reversed(procs):
        try:
            _stop(proc)
        except Exception as exc:  # stop the others anyway
            errors.append(f"{proc!r}: {exc!r}")
    if errors:
        pytest.fail("could not stop: " + "; ".join(errors), pytrace=False)


@pytest.fixture
def children(no_leaked_children):
    """A list: each ``ChildProcess`` appended is stopped when the test ends."""
    registry = []
    yield registry
    _stop_all(registry)


@pytest.fixture
def popen(no_leaked_children):
    """A list: each ``subprocess.Popen`` appended is stopped when the test ends."""
    registry = []
    yield registry
    _stop_all(registry)


@pytest.fixture
def server():
    """A listening ``net.Server`` on 127.0.0.1 that reads nothing; closed at the end."""
    from geventfork import net

    srv = net.create_server(pause_on_connect=True)
    srv.listen(0, "127.0.0.1")
    yield srv
    srv.close()


@pytest.fixture
def spawn_child(children):
    """``spawn_child(script, *args, **options)``: fork ``tests/children/script``."""
    import geventfork

    def spawn(script_name, *args, **options):
        child = geventfork.fork(os.path.join(CHILDREN_DIR, script_name), list(args), **options)
        children.append(child)
        return child

    return spawn
