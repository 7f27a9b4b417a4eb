"""Misbehaving clients never hurt a worker: end to end, with real processes.

The test process plays the parent of ``examples/priority``: a ``net.Server``
with ``pause_on_connect=True`` hands each connection, unread, to a forked
worker (``silent=True``, so that its stderr can be read). ``end_worker.py``
answers with ``socket.end()``; ``blocking_worker.py`` with ``recv`` and
``sendall`` on ``Socket.socket``. Clients reset right after connecting, reset
in the middle of the answer, connect and hang, or send megabytes; after them
the worker is alive, serves the next client in full, holds the same fds as
before, and has printed no traceback; and nothing reached the parent's hub
as an error.
"""

import socket

import gevent
import pytest

from geventfork import net
from geventfork._stream import END_LINGER
from helpers import TIMEOUT, KiB, MiB, fd_table, hub_errors, poll, read_to_eof, reset

#: Misbehaving clients per test, all at once.
BAD_CLIENTS = 10
#: Filler bytes in a normal answer.
SMALL = 100
#: Filler bytes in an answer that must still be being written when its client
#: resets: more than loopback's buffers take (4 MiB send side here).
LARGE = 8 * MiB
#: What the megabytes client sends before its request line.
MEGABYTES = 8 * MiB
#: Seconds the blocking worker waits on an idle client.
IDLE_TIMEOUT = 0.5
#: Seconds a worker gets to let go of every client socket: ``end()`` lingers.
SETTLE = END_LINGER + TIMEOUT
REQUEST = b"GET / HTTP/1.0\r\n\r\n"
#: What ``Socket`` logs for an ``'error'`` nobody listens to.
UNHANDLED = b"socket error with no 'error' listener"

WORKERS = {
    "end": ("end_worker.py",),
    "blocking": ("blocking_worker.py", IDLE_TIMEOUT),
}


def answer(size):
    """The whole answer whose filler is ``size`` bytes (the workers' format)."""
    return b"answer\n" + b"." * size


def sockets_held(pid):
    return sum(target.startswith("socket:") for target in fd_table(pid).values())


class Frontend:
    """The parent: accepts, and hands each connection, unread, to ``worker``.

    A client made by ``client(reply_size)`` is answered with ``reply_size``
    filler bytes; the message that goes with its socket says so.
    """

    def __init__(self, worker):
        self.worker = worker
        self.acks = []  # the err of each send callback
        self.clients = []
        self._reply_sizes = {}  # client port -> filler size
        self.server = net.create_server(pause_on_connect=True)
        self.server.on("connection", self._hand_off)
        self.server.listen(0, "127.0.0.1")
        self.port = self.server.address()["port"]

    def _hand_off(self, conn):
        # A client that reset before the accept has no address left: SMALL.
        size = self._reply_sizes.pop(conn.remote_port, SMALL)
        self.worker.send({"reply": size}, conn, callback=self.acks.append)

    def client(self, reply_size=SMALL):
        """A connected client socket, closed when the test ends."""
        sock = socket.socket()
        self.clients.append(sock)
        sock.settimeout(TIMEOUT)
        sock.bind(("127.0.0.1", 0))
        self._reply_sizes[sock.getsockname()[1]] = reply_size
        sock.connect(("127.0.0.1", self.port))
        return sock

    def ask(self):
        """What a well-behaved client gets: the whole answer, then EOF."""
        sock = self.client()
        sock.sendall(REQUEST)
        reply = read_to_eof(sock)
        sock.close()
        return reply

    def settled_fds(self):
        """The worker's fd table once it holds no client socket (its channel only)."""
        pid = self.worker.pid
        assert poll(lambda: sockets_held(pid) == 1, SETTLE), (
            f"the worker still holds client sockets: {fd_table(pid)}"
        )
        return fd_table(pid)

    def assert_fds_back_to(self, baseline):
        pid = self.worker.pid
        if not poll(lambda: fd_table(pid) == baseline, SETTLE):
            now = fd_table(pid)
            extra = {fd: t for fd, t in now.items() if baseline.get(fd) != t}
            gone = {fd: t for fd, t in baseline.items() if now.get(fd) != t}
            pytest.fail(
                f"worker fds not back to baseline after {SETTLE} s: extra {extra}, missing {gone}"
            )

    def stop_worker(self):
        """Disconnect the worker; it must exit 0. Returns its stderr."""
        assert self.worker.exit_code is None and self.worker.signal_code is None, (
            f"the worker died: {self.worker!r}"
        )
        self.worker.disconnect()  # nothing else keeps it alive
        assert self.worker.wait(timeout=TIMEOUT) == 0
        with gevent.Timeout(TIMEOUT, AssertionError("the worker's stderr stayed open")):
            return self.worker.stderr.read()

    def close(self):
        for sock in self.clients:
            sock.close()
        self.server.close()


@pytest.fixture
def parent_errors():
    """A list of the errors that reach this process's hub during the test (still printed)."""
    with hub_errors(show=True) as errors:
        yield errors


@pytest.fixture(params=list(WORKERS))
def frontend(request, spawn_child, parent_errors):
    """A ``Frontend`` on each worker kind, warmed up by one served client."""
    worker = spawn_child(*WORKERS[request.param], silent=True)
    front = Frontend(worker)
    try:
        assert front.ask() == answer(SMALL)
        yield front
    finally:
        front.close()
    assert parent_errors == [], "errors reached the parent's hub"
    assert all(err is None for err in front.acks), front.acks


# -- the misbehaving clients -----------------------------------------------------


def reset_at_once(front):
    """Connect, then reset before the worker has even got the socket."""
    reset(front.client())


def reset_mid_answer(front):
    """Ask for an answer too big for the kernel's buffers; reset once it begins."""
    sock = front.client(LARGE)
    sock.sendall(REQUEST)
    assert sock.recv(64 * KiB), "the answer never began"
    reset(sock)


def hang(front):
    """Connect, send nothing, read nothing; stay connected until the test ends."""
    front.client()


def send_megabytes(front):
    """Send megabytes before the request line; the answer must still come whole."""
    sock = front.client()
    sock.sendall(b"m" * MEGABYTES + REQUEST)
    assert read_to_eof(sock) == answer(SMALL)
    sock.close()


MISBEHAVIOURS = [reset_at_once, reset_mid_answer, hang, send_megabytes]


def run_all(misbehave, front, count=BAD_CLIENTS):
    jobs = [gevent.spawn(misbehave, front) for _ in range(count)]
    gevent.joinall(jobs, timeout=2 * TIMEOUT, raise_error=True)
    assert all(job.ready() for job in jobs), f"{misbehave.__name__} clients hung"


# -- the tests ------------------------------------------------------------------------


@pytest.mark.parametrize("misbehave", MISBEHAVIOURS, ids=lambda f: f.__name__)
def test_misbehaving_clients_never_hurt_a_worker(frontend, misbehave):
    baseline = frontend.settled_fds()
    run_all(misbehave, frontend)
    # Served at once, though hanging clients are still connected.
    assert frontend.ask() == answer(SMALL)
    frontend.assert_fds_back_to(baseline)
    # Every socket reached the worker (the last ACK may trail the answer).
    assert poll(lambda: len(frontend.acks) == BAD_CLIENTS + 2, TIMEOUT), frontend.acks
    stderr = frontend.stop_worker()
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")


@pytest.mark.parametrize("frontend", ["end"], indirect=True)
def test_socket_error_without_listener_is_logged_not_fatal(frontend):
    # end_worker.py has no 'error' listener: Node would throw and exit here.
    baseline = frontend.settled_fds()
    reset_mid_answer(frontend)
    frontend.assert_fds_back_to(baseline)
    assert frontend.ask() == answer(SMALL)
    stderr = frontend.stop_worker()
    assert UNHANDLED in stderr, stderr.decode(errors="replace")
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")


def test_every_misbehaviour_at_once(frontend):
    baseline = frontend.settled_fds()
    jobs = [gevent.spawn(run_all, misbehave, frontend, 3) for misbehave in MISBEHAVIOURS]
    gevent.joinall(jobs, timeout=4 * TIMEOUT, raise_error=True)
    assert all(job.ready() for job in jobs), "the clients hung"
    assert frontend.ask() == answer(SMALL)
    frontend.assert_fds_back_to(baseline)
    stderr = frontend.stop_worker()
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")
