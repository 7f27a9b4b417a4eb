"""A real HAProxy in front of two ``geventfork serve --proxy-protocol`` instances.

HAProxy (Debian's ``haproxy`` package: found on PATH or in /usr/sbin, else
installed with apt-get where we are root; skipped, saying why, only where it
cannot be) runs the README's config, ``examples/haproxy/haproxy.cfg``, with
the ports changed to free ones: ``send-proxy-v2`` to each server, health
checks every 200 ms. Each backend is ``geventfork serve`` with
``--route 127.0.0.2/32=special:1``, serving ``tests/apps/peerapp.py``, whose
answers name the worker's pid and the client address it saw. Clients bound
to 127.0.0.1, 127.0.0.2 and 127.0.0.3 are routed by their own address, though
every connection a backend accepts comes from HAProxy; then one backend is
killed (SIGKILL to its process group) and HAProxy fails over: no client sees
an error but for the request it had in flight.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from typing import List, Optional, Tuple

import gevent
import pytest
from gevent.event import Event
from helpers import TIMEOUT
import test_serve
from test_serve import START_TIMEOUT, Served

#: ``serve(TARGET, *options)``: the fixture of ``test_serve.py`` that starts a server.
serve = test_serve.serve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The config the README shows; its ports are replaced by free ones.
CONFIG = os.path.join(ROOT, "examples", "haproxy", "haproxy.cfg")
FRONTEND_PORT, SERVER_PORTS = 8000, (8001, 8002)
#: Clients' source addresses; the second is routed to the 'special' pool.
SOURCES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
SPECIAL_SOURCE = "127.0.0.2"
#: Seconds each apt-get command may take when HAProxy must be installed.
INSTALL_TIMEOUT = 150
#: Seconds the clients go on after the killed backend is gone.
AFTER_KILL = 1.5

# The test itself takes seconds; the rest is for installing HAProxy.
pytestmark = pytest.mark.timeout(60 + 3 * INSTALL_TIMEOUT)


# -- HAProxy: found or installed ----------------------------------------------------------


def find_haproxy() -> Optional[str]:
    """The ``haproxy`` program: on PATH, or where Debian puts it (/usr/sbin)."""
    found = shutil.which("haproxy")
    if found:
        return found
    for path in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy"):
        if os.access(path, os.X_OK):
            return path
    return None


def install_haproxy() -> Optional[str]:
    """Install Debian's ``haproxy`` with apt-get; None, or why it cannot be done."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "installing it (apt-get install haproxy) needs root"
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        return "there is no apt-get to install it with"
    install = [apt_get, "install", "-y", "-q", "--no-install-recommends", "haproxy"]
    problem = _apt(install)
    if problem is not None:  # most often: no package lists yet (a fresh container)
        problem = _apt([apt_get, "update", "-q"]) or _apt(install)
    return problem


def _apt(argv: List[str]) -> Optional[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            timeout=INSTALL_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return f"{' '.join(argv[1:3])} took more than {INSTALL_TIMEOUT} s"
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        return f"{' '.join(argv[1:3])} failed (status {done.returncode}): {last}"
    return None


@pytest.fixture(scope="module")
def haproxy_program() -> str:
    """The path of ``haproxy``, installed first if need be; else the test is skipped."""
    found = find_haproxy()
    if found is None:
        problem = install_haproxy()
        found = find_haproxy()
        if found is None:
            pytest.skip(f"HAProxy is not installed, and {problem or 'apt-get did not install it'}")
    return found


@pytest.fixture
def haproxy(haproxy_program, tmp_path):
    """``haproxy(config_text)``: HAProxy in the foreground (``-db``), in a process
    group of its own, ended (SIGKILL to the group) after the test; its output
    goes to ``tmp_path / "haproxy.log"``."""
    started = []

    def start(text: str) -> subprocess.Popen:
        config = tmp_path / "haproxy.cfg"
        config.write_text(text)
        with open(tmp_path / "haproxy.log", "wb") as log:
            proc = subprocess.Popen(
                [haproxy_program, "-db", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(TIMEOUT)


def free_port() -> int:
    """A port nothing listens on now (bound, then closed again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def haproxy_config(frontend: int, servers: Tuple[int, int]) -> str:
    """The README's config, listening on ``frontend``, in front of ``servers``."""
    with open(CONFIG, encoding="utf-8") as f:
        text = f.read()
    for old, new in [(FRONTEND_PORT, frontend), *zip(SERVER_PORTS, servers)]:
        assert f"127.0.0.1:{old}\n" in text, f"{CONFIG} no longer uses port {old}"
        text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    return text


# -- clients ----------------------------------------------------------------------------------


def get(port: int, source: str) -> Tuple[int, str, int, int]:
    """GET / from ``source`` on a new connection: (pid, REMOTE_ADDR, REMOTE_PORT, own port)."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=TIMEOUT, source_address=(source, 0)
    )
    try:
        conn.request("GET", "/")
        own_port = conn.sock.getsockname()[1]
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200, (response.status, body)
        pid, address, remote_port = body.split()
        return int(pid), address, int(remote_port), own_port
    finally:
        conn.close()


def start_backend(serve, tmp_path, name: str) -> Served:
    """``geventfork serve`` as the README starts it, on a port of its own."""
    served = serve(
        "peerapp:app",
        "--proxy-protocol",
        "--route",
        f"{SPECIAL_SOURCE}/32=special:1",
        "--access-log",
        str(tmp_path / f"{name}.access.log"),
    )
    return served.started(pools=("default", "special"))


def wait_for_text(path, pattern: str, timeout: float = TIMEOUT) -> str:
    """``path``'s text once ``pattern`` is found in it (fails after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        if re.search(pattern, text) or time.monotonic() > deadline:
            assert re.search(pattern, text), f"no {pattern!r} in {path}:\n{text}"
            return text
        gevent.sleep(0.05)


# -- the test ---------------------------------------------------------------------------------


def test_haproxy_with_send_proxy_v2_routes_by_the_real_client_and_fails_over(
    serve, haproxy, tmp_path
):
    one, two = (start_backend(serve, tmp_path, name) for name in ("app1", "app2"))
    pools = {}  # pid -> (backend, pool)
    for label, served in (("app1", one), ("app2", two)):
        for pool, worker_pids in served.pids.items():
            pools.update({pid: (label, pool) for pid in worker_pids})
    port = free_port()
    proxy = haproxy(haproxy_config(port, (one.port, two.port)))
    log = tmp_path / "haproxy.log"

    # Both servers in use (HAProxy takes a moment to listen).
    deadline = time.monotonic() + START_TIMEOUT
    seen = set()
    while {"app1", "app2"} - seen:
        assert proxy.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"HAProxy did not serve; its log:\n{log.read_text()}"
        try:
            seen.add(pools[get(port, "127.0.0.1")[0]][0])
        except OSError:
            gevent.sleep(0.05)

    # Routing by the client's own address; the worker sees it, port and all.
    answers = [(source, get(port, source)) for source in SOURCES for _ in range(4)]
    for source, (pid, address, remote_port, own_port) in answers:
        assert (address, remote_port) == (source, own_port)
        expected = "special" if source == SPECIAL_SOURCE else "default"
        assert pools[pid][1] == expected, (source, pools[pid])
    # Round robin: each backend's special pool served the special client.
    assert {pools[pid][0] for source, (pid, *_) in answers if source == SPECIAL_SOURCE} == {
        "app1",
        "app2",
    }
    # A worker writes its access line once the response is sent (as gunicorn
    # does): the client may read its answer first.
    for name in ("app1", "app2"):
        path = tmp_path / f"{name}.access.log"
        deadline = time.monotonic() + TIMEOUT
        while True:
            lines = path.read_text().splitlines()
            special = [line for line in lines if line.startswith(f"{SPECIAL_SOURCE} - - [")]
            if len(special) >= 2 or time.monotonic() > deadline:
                break
            gevent.sleep(0.05)
        assert len(special) == 2 and all(" pool=special " in line for line in special), lines

    # Fail-over: clients go on, one backend dies.
    results: List[Tuple[str, float, float, object]] = []  # source, began, ended, outcome
    stop = Event()

    def client(source: str) -> None:
        while not stop.is_set():
            began = time.monotonic()
            try:
                outcome: object = get(port, source)
            except Exception as exc:  # a request in flight when its backend died
                outcome = exc
            results.append((source, began, time.monotonic(), outcome))

    clients = [gevent.spawn(client, source) for source in SOURCES]
    gevent.sleep(0.5)
    dying = time.monotonic()
    os.killpg(one.proc.pid, signal.SIGKILL)
    one.proc.wait(TIMEOUT)
    dead = time.monotonic()  # its listening socket is closed by now
    wait_for_text(log, r"Server \S+/app1 is DOWN")
    gevent.sleep(AFTER_KILL)
    stop.set()
    gevent.joinall(clients, timeout=TIMEOUT, raise_error=True)

    # Only requests in flight while the backend died (from SIGKILL until it
    # was reaped) may fail: for each client the one it had under way, and
    # any it began in those few milliseconds.
    errors = [r for r in results if isinstance(r[3], Exception)]
    assert all(began < dead and ended > dying for _, began, ended, _ in errors), errors
    for source in SOURCES:
        mine = [r for r in results if r[0] == source]
        after = [outcome for _, began, _, outcome in mine if began > dead]
        assert len(after) >= 3, mine  # the clients went on after the kill, and
        expected = "special" if source == SPECIAL_SOURCE else "default"
        for pid, address, _, _ in after:  # the surviving backend served them all
            assert pools[pid] == ("app2", expected) and address == source, (source, pid)


def test_the_readme_shows_the_config_this_test_runs():
    """The README's "More than one machine" shows examples/haproxy/haproxy.cfg verbatim."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    title = "## More than one machine"
    assert title in readme
    section = readme.split(title, 1)[1].split("\n## ", 1)[0]
    with open(CONFIG, encoding="utf-8") as f:
        config = f.read()
    shown = re.search(r"```[a-z]*\n" + re.escape(config) + "```", section)
    assert shown, f"README.md's {title!r} does not show {CONFIG} as it is"
