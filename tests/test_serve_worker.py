"""``geventfork.serve.worker``: the serve worker in real processes, under a real Pool.

``tests/children/serve_parent.py`` stands in for the serve parent: a Pool of
``geventfork.serve.worker`` on a ``net.Server``; it re-sends connections
handed back once they are readable, and reports on stdout (JSON lines) what
the pool tells it. Targets are in ``tests/children/serve_apps.py``; the
parent runs in ``tests/children`` so that the workers find them from their
current directory, as gunicorn's do.
"""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys

import gevent
import pytest
from gevent.queue import Queue

from geventfork import net
from geventfork.serve.settings import WorkerSettings
from helpers import (
    CHILDREN_DIR,
    TIMEOUT,
    fd_count,
    inbox,
    next_event,
    python_env,
    read_to_eof,
    take_one,
    wait_until,
)

WSGI_LINE = re.compile(
    r"127\.0\.0\.1 - - \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<length>\d+|-) \d+\.\d{4} '
    r"pool=(?P<pool>\S+) pid=(?P<pid>\d+)$"
)
HANDLER_LINE = re.compile(
    r"127\.0\.0\.1:\d+ pool=(?P<pool>\S+) pid=(?P<pid>\d+) "
    r"in=(?P<in>\d+) out=(?P<out>\d+) \d+\.\d{4}$"
)


class Parent:
    """A running ``serve_parent.py``: its events, its stderr, its port."""

    def __init__(self, popen, settings, workers):
        env = python_env()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "geventfork", "serve_parent.py", settings.to_json(), workers],
            cwd=CHILDREN_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        popen.append(self.proc)
        self.events = Queue()
        self.stderr = []
        self.readers = [gevent.spawn(self._events), gevent.spawn(self._stderr)]
        self.port = self.next("port")["port"]

    def _events(self):
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def _stderr(self):
        for line in self.proc.stderr:
            self.stderr.append(line.decode(errors="replace"))

    def next(self, key):
        """The next event that has ``key`` (others before it are dropped)."""
        while True:
            event = take_one(self.events, f"a {key!r} event")
            if key in event:
                return event

    def connect(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(TIMEOUT * 2) == 0
        gevent.joinall(self.readers, timeout=TIMEOUT)


@pytest.fixture
def parent(popen):
    """``parent(target, workers=1, **settings)``: a ``serve_parent.py``, stopped after."""
    started = []

    def start(target, workers=1, handler=False, **options):
        settings = WorkerSettings(target, handler, "default", **options)
        started.append(Parent(popen, settings, str(workers)))
        return started[-1]

    yield start
    for each in started:
        if each.proc.poll() is None:
            each.stop()


def get(conn, path, **headers):
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    return response, response.read()


def access_lines(path, count):
    """The first ``count`` lines of the access log at ``path``, once they are there."""

    def lines():
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [line.rstrip("\n") for line in f]

    wait_until(lambda: len(lines()) >= count, f"{count} access lines")
    return lines()[:count]


def settled_fd_count(pid, expected):
    """Wait for ``pid`` to have at most ``expected`` fds open (closes may be
    deferred, and lingering ones wait for the client); return the count."""
    try:
        wait_until(lambda: fd_count(pid) <= expected, f"worker {pid} back to {expected} fds")
    except AssertionError:
        pass
    return fd_count(pid)


def test_wsgi_requests_and_their_access_lines(parent, tmp_path):
    log = str(tmp_path / "access.log")
    p = parent("serve_apps:app", access_log=log)
    conn = p.connect()
    _, pid = get(conn, "/pid")
    assert get(conn, "/")[1] == b"hello"
    conn.close()
    lines = access_lines(log, 2)
    first = WSGI_LINE.match(lines[0])
    assert first, lines[0]
    assert first.group("request", "status", "length", "pool", "pid") == (
        "GET /pid HTTP/1.1",
        "200",
        str(len(pid)),
        "default",
        pid.decode(),
    )
    assert WSGI_LINE.match(lines[1]).group("request") == "GET / HTTP/1.1"


def test_worker_fds_come_back_after_connections(parent):
    p = parent("serve_apps:app")
    _, pid = get(p.connect(), "/pid", Connection="close")
    pid = int(pid)
    wait_until(lambda: fd_count(pid) > 0, "the worker's fd table")
    gevent.sleep(0.3)  # its first connection's closing settles
    before = fd_count(pid)
    for _ in range(5):
        conn = p.connect()
        get(conn, "/")
        get(conn, "/echo")
        conn.close()
    with socket.create_connection(("127.0.0.1", p.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        assert read_to_eof(sock).startswith(b"HTTP/1.1 400")
    assert settled_fd_count(pid, before) <= before


def test_idle_connection_goes_back_to_the_parent_and_on_serving(parent):
    p = parent("serve_apps:app", idle_return=0.3)
    pid = int(get(p.connect(), "/pid", Connection="close")[1])
    gevent.sleep(0.3)  # its first connection's closing settles
    before = fd_count(pid)
    conn = p.connect()
    get(conn, "/")
    port = conn.sock.getsockname()[1]
    assert p.next("idle") == {"idle": "", "pid": pid}
    assert settled_fd_count(pid, before) <= before  # its copy closed once handed back
    assert get(conn, "/")[1] == b"hello"  # the parent sent it to the pool again
    assert conn.sock.getsockname()[1] == port
    conn.close()


def test_max_requests_retires_and_the_connection_survives(parent):
    p = parent("serve_apps:app", max_requests=2, idle_return=0)
    conn = p.connect()
    port = None
    pids = []
    for _ in range(6):
        pids.append(int(get(conn, "/pid")[1]))
        port = port or conn.sock.getsockname()[1]
        assert conn.sock.getsockname()[1] == port  # one connection throughout
    conn.close()
    assert len(set(pids)) == 3, pids  # two requests per worker
    assert pids[0] == pids[1] != pids[2]
    codes = {}  # the retired workers exit in either order
    while pids[0] not in codes:
        exit_event = p.next("exit")
        codes[exit_event["exit"]] = exit_event["code"]
    assert set(codes) <= set(pids) and set(codes.values()) == {0}, codes


def test_reload_hands_an_idle_connection_back_at_once(parent):
    p = parent("serve_apps:app", idle_return=0)
    conn = p.connect()
    old = int(get(conn, "/pid")[1])
    port = conn.sock.getsockname()[1]
    p.next("spawn")
    p.proc.send_signal(signal.SIGUSR1)  # pool.reload()
    assert p.next("idle") == {"idle": "", "pid": old}
    new = int(get(conn, "/pid")[1])
    assert new != old and conn.sock.getsockname()[1] == port
    assert p.next("exit") == {"exit": old, "code": 0, "signal": None}
    conn.close()


def test_a_retiring_worker_exits_after_the_graceful_timeout(parent):
    # A handler connection cannot be handed back: the worker that retired
    # (max_requests=1) waits for it, but graceful_timeout seconds at most.
    p = parent("serve_apps:handle", handler=True, max_requests=1, graceful_timeout=1)
    pid = p.next("spawn")["spawn"]
    with socket.create_connection(("127.0.0.1", p.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        assert p.next("exit") == {"exit": pid, "code": 0, "signal": None}
        assert read_to_eof(sock) == b""
    wait_until(lambda: any("graceful timeout" in line for line in p.stderr), "the warning")


def test_stop_finishes_busy_requests_and_closes_idle_ones(parent):
    p = parent("serve_apps:app")
    idle = p.connect()
    get(idle, "/")
    busy = socket.create_connection(("127.0.0.1", p.port), timeout=TIMEOUT)
    busy.sendall(b"GET /sleep?0.5 HTTP/1.1\r\nHost: t\r\n\r\n")
    gevent.sleep(0.2)
    p.proc.send_signal(signal.SIGTERM)
    answer = read_to_eof(busy)
    busy.close()
    assert answer.endswith(b"slept") and b"\r\nConnection: close\r\n" in answer
    assert read_to_eof(idle.sock) == b""  # EOF, no reset
    idle.close()
    assert p.proc.wait(TIMEOUT) == 0
    assert p.next("exit")["code"] == 0


def test_socketserver_handler(parent, tmp_path):
    log = str(tmp_path / "access.log")
    p = parent("serve_apps:Echo", access_log=log)
    with socket.create_connection(("127.0.0.1", p.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"hello\n")
        line, pid = read_to_eof(sock).split()
    assert line == b"hello"
    fields = HANDLER_LINE.match(access_lines(log, 1)[0])
    assert fields.group("pool", "pid", "in") == ("default", pid.decode(), "6")
    assert fields.group("out") == str(len(b"hello " + pid + b"\n"))


def test_simple_http_request_handler(parent):
    p = parent("serve_apps:Files")
    pid = p.next("spawn")["spawn"]
    with open(os.path.join(CHILDREN_DIR, "serve_apps.py"), "rb") as f:
        expected = f.read()
    before = None
    for _ in range(4):
        conn = p.connect()
        response, body = get(conn, "/serve_apps.py")
        assert response.status == 200 and body == expected
        conn.close()
        if before is None:
            gevent.sleep(0.3)  # the first connection's closing settles
            before = fd_count(pid)
    assert settled_fd_count(pid, before) <= before


def test_plain_handler(parent):
    p = parent("serve_apps:handle", handler=True)
    with socket.create_connection(("127.0.0.1", p.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"one two three")
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == b"one two three"


def test_handler_that_raises_is_logged_and_the_client_gets_eof(parent):
    p = parent("serve_apps:handle_raise", handler=True)
    pid = p.next("spawn")["spawn"]
    with socket.create_connection(("127.0.0.1", p.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"x")
        assert read_to_eof(sock) == b""
    wait_until(lambda: any("ValueError" in line for line in p.stderr), "the traceback")
    before = fd_count(pid)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", p.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"x" * 1000)  # some of it unread by the handler: still no reset
            assert read_to_eof(sock) == b""
    assert settled_fd_count(pid, before) <= before
    failure = "ValueError: the handler failed on purpose"
    wait_until(lambda: "".join(p.stderr).count(failure) == 4, "four tracebacks")
    assert "[ERROR] Error handling connection from ('127.0.0.1'," in "".join(p.stderr)


def test_a_target_that_does_not_load_is_one_line_and_status_1():
    settings = WorkerSettings("no_such_module_here:app", False, "default")
    done = subprocess.run(
        [sys.executable, "-m", "geventfork", "geventfork.serve.worker", settings.to_json()],
        cwd=CHILDREN_DIR,
        env=python_env(),
        capture_output=True,
        timeout=TIMEOUT * 2,
    )
    assert done.returncode == 1
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and "no_such_module_here" in lines[0] and "[ERROR]" in lines[0]


@pytest.fixture
def accepted():
    """``accepted()``: a connected (client socket, server-side ``net.Socket``) pair."""
    server = net.create_server(pause_on_connect=True)
    server.listen(0, "127.0.0.1")
    made = []

    def connect():
        arrived = next_event(server, "connection")
        client = socket.create_connection(("127.0.0.1", server.address()["port"]), timeout=TIMEOUT)
        made.append(client)
        return client, arrived.get(timeout=TIMEOUT)[0]

    yield connect
    server.close()
    for client in made:
        client.close()


def test_a_retired_worker_hands_new_arrivals_straight_back(spawn_child, accepted):
    settings = WorkerSettings("serve_apps:app", False, "default")
    child = spawn_child("serve_retired.py", settings.to_json())
    messages = inbox(child, handles=True)
    client, conn = accepted()
    client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    child.send({"op": "connection", "head": "\xe9arlier bytes"}, conn)
    message, handle = take_one(messages, "the connection back")
    assert message == {"op": "idle", "head": "\xe9arlier bytes"}  # latin-1 both ways
    assert handle.socket.recv(100, socket.MSG_PEEK).startswith(b"GET / ")  # nothing read
    handle.socket.sendall(b"still here")
    assert client.recv(100) == b"still here"
    handle.destroy()
    assert child.wait(TIMEOUT) == 0  # with no connection left, it disconnected and exited


def test_a_message_that_is_not_a_connection_is_one_line_and_its_socket_ended(spawn_child, accepted):
    settings = WorkerSettings("serve_apps:app", False, "default")
    child = spawn_child("serve_retired.py", settings.to_json(), silent=True)
    client, conn = accepted()
    child.send({"op": "nonsense"}, conn)
    assert read_to_eof(client) == b""
    child.disconnect()
    assert child.wait(TIMEOUT) == 0
    lines = child.stderr.read().decode().splitlines()
    assert len(lines) == 1 and "unexpected message from the parent" in lines[0], lines
