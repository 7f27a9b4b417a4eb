"""The parts of ``geventfork serve``'s parent, in this process: routing, binds,
idle connections, the reload's check (the whole server is in test_serve.py)."""

from __future__ import annotations

import ipaddress
import os
import socket

import gevent
import pytest
from helpers import TIMEOUT, wait_until

from geventfork import net
from geventfork.serve.check import check_target
from geventfork.serve.idle import IdleConnections
from geventfork.serve.listeners import BindError, listen_all
from geventfork.serve.pidfile import PidFile, PidFileError
from geventfork.serve.routing import Router, pool_sizes
from geventfork.serve.settings import DEFAULT_POOL, Bind, Route

APPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "apps")


def route(cidr, name, workers=1):
    return Route(ipaddress.ip_network(cidr), name, workers)


# -- routing --------------------------------------------------------------------


def test_first_matching_route_wins():
    router = Router([route("127.0.0.2/32", "vip"), route("127.0.0.0/8", "local")])
    assert router.pool_for("127.0.0.2") == "vip"
    assert router.pool_for("127.0.0.3") == "local"
    assert router.pool_for("10.0.0.1") == DEFAULT_POOL


def test_routing_of_ipv6_unix_and_odd_addresses():
    router = Router([route("10.0.0.0/8", "ten"), route("fd00::/8", "ula")])
    assert router.pool_for("::ffff:10.1.2.3") == "ten"  # an IPv4 client of a [::] bind
    assert router.pool_for("fd00::1%eth0") == "ula"  # a zone is not part of the address
    assert router.pool_for(None) == DEFAULT_POOL  # a Unix socket's client
    assert router.pool_for("") == DEFAULT_POOL
    assert router.pool_for("not an address") == DEFAULT_POOL
    assert Router([]).pool_for("10.0.0.1") == DEFAULT_POOL
    assert not Router([]) and router


def test_pool_sizes_default_first_then_routes_in_order():
    routes = [route("10.0.0.0/8", "b", 2), route("11.0.0.0/8", "a", 3), route("12.0.0.0/8", "b")]
    assert pool_sizes(4, routes) == [(DEFAULT_POOL, 4), ("b", 2), ("a", 3)]


# -- binds ----------------------------------------------------------------------


def test_port_zero_reports_the_port_bound():
    (listener,) = listen_all([Bind("127.0.0.1", 0)])
    try:
        port = listener.server.address()["port"]
        assert port and listener.url == f"http://127.0.0.1:{port}"
    finally:
        listener.close()


def test_all_interfaces_and_ipv6_binds():
    binds = [Bind("", 0)]
    if socket.has_ipv6:
        binds.append(Bind("::1", 0))
    listeners = listen_all(binds)
    try:
        assert listeners[0].url.startswith("http://0.0.0.0:")
        if socket.has_ipv6:
            assert listeners[1].url.startswith("http://[::1]:")
    finally:
        for listener in listeners:
            listener.close()


def test_a_bind_in_use_closes_the_others_and_says_so():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BindError) as info:
            listen_all([Bind("127.0.0.1", 0), Bind("127.0.0.1", port)])
    assert str(info.value) == f"cannot listen on 127.0.0.1:{port}: address already in use"
    # The first bind was closed again: the no_leaked_fds fixture checks its fd.


def test_unix_bind_in_use_stale_and_not_a_socket(tmp_path):
    path = str(tmp_path / "s.sock")
    (first,) = listen_all([Bind(path=path)])
    try:
        assert first.url == f"unix:{path}"
        with pytest.raises(BindError, match="address already in use"):
            listen_all([Bind(path=path)])  # somebody listens: left alone
    finally:
        first.close()
    assert not os.path.exists(path)  # removed with its server
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(path)  # a killed server's leftover
    (second,) = listen_all([Bind(path=path)])
    second.close()
    with open(path, "w") as f:
        f.write("mine")
    with pytest.raises(BindError, match="not a socket"):
        listen_all([Bind(path=path)])
    with open(path) as f:
        assert f.read() == "mine"


# -- idle connections -------------------------------------------------------------


@pytest.fixture
def pair():
    """(server side net.Socket, client socket) of a real TCP connection."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        accepted, _ = listener.accept()
    conn = net.Socket(accepted, paused=True)
    yield conn, client
    conn.destroy()
    client.close()


def test_an_idle_connection_goes_on_when_its_request_arrives(pair):
    conn, client = pair
    woken = []
    idle = IdleConnections(lambda c, head: woken.append((c, head)))
    idle.add(conn, "")
    gevent.sleep(0.1)
    assert woken == [] and len(idle) == 1
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    wait_until(lambda: woken, "the request to be noticed")
    assert woken == [(conn, "")] and len(idle) == 0
    assert conn.socket.recv(100) == b"GET / HTTP/1.1\r\n\r\n"  # nothing was read


def test_an_idle_connection_with_bytes_read_goes_on_at_once(pair):
    conn, _ = pair
    woken = []
    idle = IdleConnections(lambda c, head: woken.append(head))
    idle.add(conn, "GET /")
    wait_until(lambda: woken, "the hand-off")
    assert woken == ["GET /"] and len(idle) == 0


def test_an_idle_connection_closed_by_its_client_is_closed(pair):
    conn, client = pair
    idle = IdleConnections(lambda c, head: pytest.fail("no request came"))
    idle.add(conn, "")
    client.shutdown(socket.SHUT_WR)
    wait_until(lambda: conn.destroyed, "our copy to be closed")
    assert client.recv(10) == b""  # EOF, not a reset
    assert len(idle) == 0


def test_a_connection_idle_past_keep_alive_is_closed_gracefully(pair):
    conn, client = pair
    idle = IdleConnections(lambda c, head: pytest.fail("no request came"), keep_alive=0.3)
    idle.add(conn, "")
    client.settimeout(TIMEOUT)
    assert client.recv(10) == b""  # EOF after keep_alive, not a reset
    assert len(idle) == 0


def test_close_all_ends_idle_connections_gracefully(pair):
    conn, client = pair
    idle = IdleConnections(lambda c, head: pytest.fail("no request came"))
    idle.add(conn, "")
    idle.close_all()
    assert client.recv(10) == b""
    assert len(idle) == 0


# -- pid file -------------------------------------------------------------------


def test_pid_file_written_refused_and_removed(tmp_path):
    path = tmp_path / "server.pid"
    pid_file = PidFile(str(path))
    pid_file.write()
    assert path.read_text() == f"{os.getpid()}\n"
    pid_file.remove()
    assert not path.exists()
    path.write_text(f"{os.getppid()}\n")  # a process that runs
    with pytest.raises(PidFileError, match="names a running process"):
        PidFile(str(path)).write()
    PidFile(str(path)).remove()  # not ours: left alone
    assert path.exists()
    with pytest.raises(PidFileError, match="cannot write pid file"):
        PidFile(str(tmp_path / "no" / "such" / "dir.pid")).write()


# -- the reload's check ---------------------------------------------------------


@pytest.mark.timeout(60)
def test_check_target():
    assert check_target("pidapp:app", False, APPS) is None
    problem = check_target("pidapp:missing", False, APPS)
    assert problem is not None and "missing" in problem and not problem.startswith("[")
