"""End-to-end tests of ``geventfork serve``: the real command, real clients.

Each test starts ``python -m geventfork serve`` in a process group of its own
(binding ``127.0.0.1:0`` and reading the port from the start-up line) and
drives it with ``http.client`` and raw sockets; the fixture ends the whole
group, so no worker outlives a test. The apps live in ``tests/apps/``: every
answer names the worker's pid, which is how routing, reloads and
replacements are checked.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import gevent
import pytest
from gevent.event import Event
from gevent.queue import Empty, Queue
from helpers import TIMEOUT

APPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "apps")
#: Seconds a server gets to start (patch_all in the parent and each worker).
START_TIMEOUT = 20
#: Seconds a server gets to exit after a stop signal, beyond its graceful timeout.
EXIT_TIMEOUT = 15

pytestmark = pytest.mark.timeout(90)


# -- the server under test ------------------------------------------------------


class Served:
    """A running ``geventfork serve``: its process, port, workers and log."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list = []  # every stderr line so far
        self._new: Queue = Queue()
        self._cursor = 0
        self.reader = gevent.spawn(self._read)
        self.port = None
        self.pids: dict = {}  # pool name -> the pids it started with

    def _read(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            self._new.put(line)
        self._new.put(None)

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> re.Match:
        """The next log line (after the last one matched) matching ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            while self._cursor < len(self.lines):
                line = self.lines[self._cursor]
                self._cursor += 1
                match = regex.search(line)
                if match:
                    return match
            left = deadline - time.monotonic()
            if left <= 0 or self.reader.dead:
                raise AssertionError(
                    f"no log line matching {pattern!r} within {timeout} s; log:\n" + self.log()
                )
            try:
                self._new.get(timeout=left)
            except Empty:
                pass

    def log(self) -> str:
        return "\n".join(self.lines)

    def started(self, pools=("default",)) -> Served:
        """Wait for the start-up lines; note the port and each pool's pids."""
        match = self.wait_for(r"listening on (\S+)", START_TIMEOUT)
        url = match.group(1)
        if url.startswith("http://"):
            self.port = int(url.rsplit(":", 1)[1])
        for _ in pools:
            match = self.wait_for(r"pool (\S+): \d+ workers? \(pids ([\d, ]+)\)", START_TIMEOUT)
            self.pids[match.group(1)] = [int(p) for p in match.group(2).split(",")]
        return self

    def kill(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        return self.proc.wait(timeout=timeout)

    def group_gone(self) -> bool:
        """Whether no process of the server's group (its workers) is left."""
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return True
        return False


@pytest.fixture
def serve():
    """``serve(TARGET, *options, cwd=APPS, bind=True)``: start a server; end its group after."""
    started = []

    def start(*args, cwd=APPS, bind=True, env=None):
        argv = [sys.executable, "-m", "geventfork", "serve", *args]
        if bind:
            argv += ["-b", "127.0.0.1:0"]
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        served = Served(proc)
        started.append(served)
        return served

    yield start
    for served in started:
        _end_group(served)


def _end_group(served: Served) -> None:
    proc = served.proc
    if proc.poll() is None:
        _killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    _killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group: workers too
    proc.wait(timeout=EXIT_TIMEOUT)
    served.reader.join(TIMEOUT)
    proc.stderr.close()


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# -- clients --------------------------------------------------------------------


def get(port, path="/", source=None, conn=None):
    """GET ``path``; return (status, body as str). A new connection unless ``conn``."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=TIMEOUT, source_address=(source, 0) if source else None
        )
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        if own:
            conn.close()


def pid_of(body: str) -> int:
    return int(body.split()[0])


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a Unix socket."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(self.path)


def lines_client(port, lines):
    """Send ``lines`` on one connection, one at a time; return the answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        stream = sock.makefile("rwb")
        answers = []
        for line in lines:
            stream.write(line + b"\n")
            stream.flush()
            answers.append(stream.readline().decode().rstrip("\n"))
        stream.close()
        return answers


def read_response(sock) -> bytes:
    """One whole HTTP response (with a Content-Length) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"EOF inside the headers: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"EOF inside the body: {data!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_fd_count(pid, expected=None):
    """The fd count of ``pid`` once it holds still (or reaches ``expected``)."""
    deadline = time.monotonic() + TIMEOUT
    last = fd_count(pid)
    while time.monotonic() < deadline:
        gevent.sleep(0.3)
        now = fd_count(pid)
        if now == expected or (expected is None and now == last):
            return now
        last = now
    return last


def copy_app(tmp_path, name="pidapp.py"):
    shutil.copy(os.path.join(APPS, name), tmp_path / name)
    return tmp_path


def loader(port, results, stop, keep_alive=False):
    """GET / until ``stop`` is set, each on a new connection or all on one
    (``keep_alive``); results get ("ok", body) or ("error", what went wrong)."""
    conn = None
    while not stop.is_set():
        if conn is None and keep_alive:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        try:
            status, body = get(port, "/", conn=conn)
            results.append(("ok", body) if status == 200 else ("error", f"status {status}"))
        except Exception as exc:  # a failed request is the finding
            results.append(("error", repr(exc)))
            if conn is not None:
                conn.close()
                conn = None
    if conn is not None:
        conn.close()


# -- targets --------------------------------------------------------------------


def test_wsgi_app_keep_alive(serve):
    served = serve("pidapp:app", "-w", "2").started()
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=TIMEOUT)
    try:
        answers = [get(None, f"/{i}", conn=conn) for i in range(5)]
        port = conn.sock.getsockname()[1]
        answers.append(get(None, "/last", conn=conn))
        assert conn.sock.getsockname()[1] == port  # one connection throughout
    finally:
        conn.close()
    assert [status for status, _ in answers] == [200] * 6
    assert all(pid_of(body) in served.pids["default"] for _, body in answers)


def test_factory_and_file_targets(serve):
    factory = serve("pidapp:create_app()", "-w", "1").started()
    status, body = get(factory.port, "/f")
    assert status == 200 and body.endswith("v1 /f")
    by_path = serve(os.path.join(APPS, "pidapp.py") + ":app", "-w", "1", cwd="/").started()
    status, body = get(by_path.port, "/p")
    assert status == 200 and pid_of(body) in by_path.pids["default"]


def test_socketserver_handler(serve):
    served = serve("handlers:LineHandler", "-w", "1").started()
    answers = lines_client(served.port, [b"one", b"two"])
    pid = served.pids["default"][0]
    assert answers == [f"{pid} one", f"{pid} two"]


def test_plain_handler(serve):
    served = serve("handlers:handle", "--handler", "-w", "1").started()
    answers = lines_client(served.port, [b"hello"])
    assert answers == [f"{served.pids['default'][0]} hello"]


def test_flask_app(serve):
    pytest.importorskip("flask")
    served = serve("flaskapp:app", "-w", "1").started()
    status, body = get(served.port)
    assert status == 200 and body == f"{served.pids['default'][0]} flask"


# -- routing, binds, config -----------------------------------------------------


def test_route_by_client_address(serve):
    served = serve("pidapp:app", "-w", "2", "--route", "127.0.0.2/32=vip:1")
    served.started(pools=("default", "vip"))
    vip = {pid_of(get(served.port, source="127.0.0.2")[1]) for _ in range(4)}
    others = {pid_of(get(served.port, source="127.0.0.1")[1]) for _ in range(4)}
    assert vip == set(served.pids["vip"])
    assert others <= set(served.pids["default"])


def test_unix_bind(serve, tmp_path):
    path = str(tmp_path / "s.sock")
    served = serve("pidapp:app", "-w", "1", "-b", f"unix:{path}", bind=False).started()
    conn = UnixHTTPConnection(path)
    try:
        conn.request("GET", "/u")
        response = conn.getresponse()
        assert response.status == 200 and response.read().decode().endswith("/u")
    finally:
        conn.close()
    served.kill(signal.SIGTERM)
    assert served.wait() == 0
    assert not os.path.exists(path)  # removed on exit


def test_connections_during_start_up_are_served(serve, tmp_path):
    """A client that connects as soon as the socket exists is served, not closed."""
    path = str(tmp_path / "early.sock")
    served = serve("pidapp:app", "-w", "2", "-b", f"unix:{path}", bind=False)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        conn = UnixHTTPConnection(path)
        try:
            conn.connect()
            break
        except OSError:
            conn.close()
            assert time.monotonic() < deadline, served.log()
            gevent.sleep(0.001)
    try:
        conn.request("GET", "/early")
        response = conn.getresponse()
        assert response.status == 200 and response.read().decode().endswith("/early")
    finally:
        conn.close()


def test_unix_bind_replaces_a_stale_socket_file(serve, tmp_path):
    path = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(path)  # bound, never listening, closed: a killed server's leftover
    served = serve("pidapp:app", "-w", "1", "-b", f"unix:{path}", bind=False).started()
    conn = UnixHTTPConnection(path)
    try:
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    served.kill(signal.SIGTERM)
    assert served.wait() == 0


def test_config_file(serve, tmp_path):
    config = tmp_path / "conf.py"
    config.write_text('bind = ["127.0.0.1:0"]\nworkers = 3\n')
    served = serve("pidapp:app", "-c", str(config), bind=False).started()
    assert len(served.pids["default"]) == 3
    assert get(served.port)[0] == 200


def test_pid_file(serve, tmp_path):
    pid_file = tmp_path / "server.pid"
    served = serve("pidapp:app", "-w", "1", "--pid", str(pid_file)).started()
    assert pid_file.read_text().strip() == str(served.proc.pid)
    served.kill(signal.SIGTERM)
    assert served.wait() == 0
    assert not pid_file.exists()


def test_access_log(serve, tmp_path):
    log = tmp_path / "access.log"
    served = serve("pidapp:app", "-w", "1", "--access-log", str(log)).started()
    status, body = get(served.port, "/logged")
    assert status == 200
    pid = pid_of(body)

    def logged():
        return log.exists() and "/logged" in log.read_text()

    deadline = time.monotonic() + TIMEOUT
    while not logged() and time.monotonic() < deadline:
        gevent.sleep(0.05)
    line = log.read_text().splitlines()[-1]
    assert re.fullmatch(
        r'127\.0\.0\.1 - - \[[^]]+\] "GET /logged HTTP/1\.1" 200 \d+ [\d.]+ '
        rf"pool=default pid={pid}",
        line,
    ), line


# -- bad input ------------------------------------------------------------------


def _failed_start(served: Served) -> tuple:
    """(exit status, stderr lines) of a server that must not start."""
    status = served.wait(START_TIMEOUT)
    served.reader.join(TIMEOUT)
    return status, [line for line in served.lines if line.strip()]


def test_port_in_use(serve):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        served = serve("pidapp:app", "-b", f"127.0.0.1:{port}", bind=False)
        status, lines = _failed_start(served)
    assert status == 1
    assert len(lines) == 1 and "address already in use" in lines[0], lines
    assert served.group_gone()  # no worker left


@pytest.mark.parametrize(
    "args, status, words",
    [
        (["no_such_module:app"], 1, "no_such_module"),
        (["pidapp:no_such_name"], 1, "no_such_name"),
        (["pidapp:app", "--route", "300.0.0.0/8=x"], 2, "300.0.0.0/8"),
        (["pidapp:app", "--no-such-option"], 2, "--no-such-option"),
    ],
)
def test_bad_input(serve, args, status, words):
    served = serve(*args)
    got, lines = _failed_start(served)
    assert got == status, lines
    assert any(words in line for line in lines), lines
    assert not any("Traceback" in line for line in lines), lines
    assert served.group_gone()


def test_an_access_log_that_cannot_be_opened_is_one_line_and_no_worker(serve, tmp_path):
    served = serve("pidapp:app", "--access-log", str(tmp_path / "missing" / "access.log"))
    status, lines = _failed_start(served)
    assert status == 1
    assert len(lines) == 1 and "cannot open the access log" in lines[0], lines
    assert served.group_gone()


def test_workers_that_cannot_start_end_the_server_with_status_1(serve):
    served = serve("workeronly:app", "-w", "1")
    status = served.wait(START_TIMEOUT * 3)
    served.reader.join(TIMEOUT)
    assert status == 1
    errors = [line for line in served.lines if "[ERROR]" in line]
    assert errors and "the workers cannot start" in errors[-1], served.lines
    assert "no database in the workers" in errors[-1]
    assert served.group_gone()


# -- signals --------------------------------------------------------------------


def test_sigterm_finishes_requests_in_flight(serve):
    served = serve("pidapp:app", "-w", "2", "--graceful-timeout", "10").started()
    slow = [gevent.spawn(get, served.port, "/sleep", None) for _ in range(4)]
    with socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT):
        pass  # the server is up; let the slow requests reach the workers
    gevent.sleep(0.5)
    served.kill(signal.SIGTERM)
    gevent.joinall(slow, timeout=EXIT_TIMEOUT)
    assert [g.value[0] if g.successful() else g.exception for g in slow] == [200] * 4
    assert served.wait() == 0
    assert served.group_gone()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_signal_to_the_whole_group_finishes_requests(serve, sig):
    served = serve("pidapp:app", "-w", "2", "--graceful-timeout", "10").started()
    get(served.port)
    slow = [gevent.spawn(get, served.port, "/sleep", None) for _ in range(3)]
    gevent.sleep(0.5)
    os.killpg(served.proc.pid, sig)
    gevent.joinall(slow, timeout=EXIT_TIMEOUT)
    assert served.wait() == 0
    assert [g.value[0] if g.successful() else g.exception for g in slow] == [200] * 3


def test_sigquit_stops_at_once(serve):
    served = serve("pidapp:app", "-w", "1", "--graceful-timeout", "30").started()
    slow = gevent.spawn(get, served.port, "/sleep?20", None)
    gevent.sleep(0.5)
    served.kill(signal.SIGQUIT)
    assert served.wait(EXIT_TIMEOUT) == 0
    assert served.group_gone()
    slow.join(TIMEOUT)
    assert slow.ready()


def test_sighup_under_load(serve, tmp_path):
    """Clients on new connections and on kept-alive ones see no error."""
    copy_app(tmp_path)
    served = serve("pidapp:app", "-w", "2", cwd=str(tmp_path)).started()
    old = set(served.pids["default"])
    results: list = []
    stop = Event()
    clients = [gevent.spawn(loader, served.port, results, stop, i % 2 == 1) for i in range(4)]
    try:
        gevent.sleep(0.5)
        app = tmp_path / "pidapp.py"
        # Another size too: a .pyc written in the same second as the change, for a
        # source of the same size, would pass for up to date.
        app.write_text(app.read_text().replace('VERSION = "v1"', 'VERSION = "v2"  # reloaded'))
        served.kill(signal.SIGHUP)
        for _ in old:
            served.wait_for(r"worker (\d+) exited", START_TIMEOUT)
        mark = len(results)
        gevent.sleep(0.5)
    finally:
        stop.set()
        gevent.joinall(clients, timeout=TIMEOUT)
    failed = [r for r in results if r[0] != "ok"]
    assert not failed, failed[:5]
    after = [body for _, body in results[mark:]]
    assert after and all(body.split()[1] == "v2" for body in after)
    assert not {pid_of(body) for body in after} & old  # every worker is new


def test_sighup_with_a_broken_app_keeps_the_workers(serve, tmp_path):
    copy_app(tmp_path)
    served = serve("pidapp:app", "-w", "1", cwd=str(tmp_path)).started()
    assert get(served.port)[0] == 200  # the worker imported the app
    (tmp_path / "pidapp.py").write_text("this is not python\n")
    served.kill(signal.SIGHUP)
    served.wait_for(r"reload failed.*pidapp", START_TIMEOUT)
    status, body = get(served.port)
    assert status == 200 and pid_of(body) == served.pids["default"][0]


def test_keep_alive_connection_across_sighup(serve, tmp_path):
    copy_app(tmp_path)
    served = serve("pidapp:app", "-w", "1", cwd=str(tmp_path)).started()
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=TIMEOUT)
    try:
        first = pid_of(get(None, "/", conn=conn)[1])
        port = conn.sock.getsockname()[1]
        served.kill(signal.SIGHUP)
        served.wait_for(rf"worker {first} exited", START_TIMEOUT)
        status, body = get(None, "/", conn=conn)
        assert status == 200 and pid_of(body) != first
        assert conn.sock.getsockname()[1] == port  # the same connection
    finally:
        conn.close()


def test_ttin_ttou(serve):
    served = serve("pidapp:app", "-w", "1").started()
    served.kill(signal.SIGTTIN)
    served.wait_for(r"pool default: 2 workers")
    new = int(served.wait_for(r"pool default: worker (\d+) started").group(1))
    served.kill(signal.SIGTTOU)
    served.wait_for(r"pool default: 1 worker\b")
    served.wait_for(r"worker \d+ exited")
    served.kill(signal.SIGTTOU)  # never below one worker
    served.wait_for(r"keeping its last worker")
    pids = {pid_of(get(served.port)[1]) for _ in range(4)}
    assert len(pids) == 1 and pids <= {new, served.pids["default"][0]}


def test_keep_alive_connections_across_ttou(serve):
    served = serve("pidapp:app", "-w", "1").started()
    first = served.pids["default"][0]
    served.kill(signal.SIGTTIN)
    second = int(served.wait_for(r"pool default: worker (\d+) started").group(1))
    conns = [
        http.client.HTTPConnection("127.0.0.1", served.port, timeout=TIMEOUT) for _ in range(4)
    ]
    try:
        on = [pid_of(get(None, "/", conn=conn)[1]) for conn in conns]
        deadline = time.monotonic() + TIMEOUT
        while second not in on and time.monotonic() < deadline:  # the new one is up
            on = [pid_of(get(None, "/", conn=conn)[1]) for conn in conns]
        assert second in on, on
        ports = [conn.sock.getsockname()[1] for conn in conns]
        served.kill(signal.SIGTTOU)  # the newest worker retires
        served.wait_for(rf"worker {second} exited", START_TIMEOUT)
        after = [get(None, "/", conn=conn) for conn in conns]
        assert [status for status, _ in after] == [200] * 4
        assert {pid_of(body) for _, body in after} == {first}
        assert [conn.sock.getsockname()[1] for conn in conns] == ports  # the same connections
    finally:
        for conn in conns:
            conn.close()


# -- workers that die, hang or retire ---------------------------------------------


def raw_request(port, path):
    """A connected socket that has sent ``GET path``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def test_worker_exiting_mid_request_is_replaced(serve):
    served = serve("pidapp:app", "-w", "2").started()
    parent = served.proc.pid
    get(served.port)
    before = settled_fd_count(parent)
    with raw_request(served.port, "/exit") as sock:
        assert sock.recv(65536) == b""  # EOF from the pool, not a reset, not a hang
    dead = int(served.wait_for(r"worker (\d+) exited with status 3").group(1))
    served.wait_for(r"worker \d+ started")
    answers = [get(served.port) for _ in range(6)]
    assert [status for status, _ in answers] == [200] * 6
    assert dead not in {pid_of(body) for _, body in answers}
    assert settled_fd_count(parent, before) == before


def test_stuck_worker_is_killed_by_the_heartbeat(serve):
    served = serve("pidapp:app", "-w", "2", "--timeout", "2").started()
    parent = served.proc.pid
    get(served.port)
    before = settled_fd_count(parent)
    with raw_request(served.port, "/stuck") as stuck:
        gevent.sleep(0.3)
        others = [gevent.spawn(get, served.port, f"/{i}", None) for i in range(6)]
        gevent.joinall(others, timeout=3 * TIMEOUT)
        assert [g.value[0] if g.successful() else g.exception for g in others] == [200] * 6
        killed = int(served.wait_for(r"worker (\d+) did not answer").group(1))
        served.wait_for(rf"worker {killed} killed by SIGKILL")
        stuck.settimeout(3 * TIMEOUT)
        assert stuck.recv(65536) == b""  # ended by the pool: EOF, not a reset
    served.wait_for(r"worker \d+ started")
    assert get(served.port)[0] == 200
    assert settled_fd_count(parent, before) == before


def test_max_requests(serve):
    served = serve("pidapp:app", "-w", "1", "--max-requests", "3").started()
    answers = [get(served.port, f"/{i}") for i in range(10)]
    assert [status for status, _ in answers] == [200] * 10
    pids = [pid_of(body) for _, body in answers]
    assert len(set(pids)) >= 3
    # Each retired worker exits once its connections are done, long before
    # the graceful timeout (30 s): none lingers.
    retired = set(pids) - {pids[-1]}
    while retired:
        retired.discard(int(served.wait_for(r"worker (\d+) exited\b", 2 * TIMEOUT).group(1)))


def test_keep_alive_connection_across_max_requests(serve):
    served = serve("pidapp:app", "-w", "1", "--max-requests", "2").started()
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=TIMEOUT)
    try:
        answers = [get(None, f"/{i}", conn=conn) for i in range(7)]
        ports = {conn.sock.getsockname()[1]}
        answers += [get(None, "/last", conn=conn)]
        ports.add(conn.sock.getsockname()[1])
    finally:
        conn.close()
    assert [status for status, _ in answers] == [200] * 8
    assert len(ports) == 1  # one connection throughout
    assert len({pid_of(body) for _, body in answers}) >= 3


# -- idle connections held by the parent ----------------------------------------


def test_idle_connections_go_back_to_the_parent_and_free_their_fds(serve):
    served = serve("pidapp:app", "-w", "1", "--idle-return", "0.2").started()
    parent, worker = served.proc.pid, served.pids["default"][0]
    get(served.port)  # every lazy fd of both opened
    parent_before, worker_before = settled_fd_count(parent), settled_fd_count(worker)
    conns = [
        http.client.HTTPConnection("127.0.0.1", served.port, timeout=TIMEOUT) for _ in range(10)
    ]
    try:
        for conn in conns:
            assert get(None, "/", conn=conn)[0] == 200
        # Idle: handed back; the worker holds none of them, the parent all.
        assert settled_fd_count(worker, worker_before) == worker_before
        assert settled_fd_count(parent, parent_before + 10) == parent_before + 10
        assert get(None, "/again", conn=conns[0])[0] == 200  # and serves them again
    finally:
        for conn in conns:
            conn.close()
    assert settled_fd_count(parent, parent_before) == parent_before
    assert settled_fd_count(worker, worker_before) == worker_before


def test_sigterm_closes_idle_connections(serve):
    served = serve("pidapp:app", "-w", "1", "--idle-return", "0.2").started()
    with socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        gevent.sleep(0.6)  # idle: handed back to the parent
        served.kill(signal.SIGTERM)
        assert sock.recv(65536) == b""  # a clean EOF, not a reset
    assert served.wait() == 0
