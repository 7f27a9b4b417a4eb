"""``net.create_server(proxy_protocol=True)``: the client's address from a PROXY header.

Real sockets on 127.0.0.1; the headers are written by the test, as HAProxy
writes them (the test with a real HAProxy is in ``test_haproxy.py``).
"""

import logging
import os
import socket

import gevent
import pytest
from gevent.queue import Queue

from geventfork import net
from geventfork._proxy import encode_v1, encode_v2
from helpers import TIMEOUT, fd_count, read_to_eof, wait_until

CLIENT = ("203.0.113.7", 51000)
PROXY_V1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 80\r\n"


@pytest.fixture
def proxied():
    """``proxied(**options)``: a listening proxy-protocol server and its connections."""
    servers = []

    def start(**options):
        server = net.create_server(pause_on_connect=True, proxy_protocol=True, **options)
        conns = Queue()
        server.on("connection", conns.put)
        server.listen(0, "127.0.0.1")
        servers.append(server)
        return server, conns

    yield start
    for server in servers:
        server.close()


def connect(server):
    return socket.create_connection(("127.0.0.1", server.address()["port"]), timeout=TIMEOUT)


def test_a_v1_header_gives_the_clients_address_and_leaves_its_data_unread(proxied):
    server, conns = proxied()
    with connect(server) as client:
        client.sendall(PROXY_V1 + b"GET / HTTP/1.1\r\n")
        conn = conns.get(timeout=TIMEOUT)
        assert (conn.remote_address, conn.remote_port) == CLIENT
        assert conn.socket.recv(100) == b"GET / HTTP/1.1\r\n"
        conn.destroy()


@pytest.mark.parametrize("version", [1, 2])
def test_a_header_that_arrives_a_byte_at_a_time_is_read_exactly(proxied, version):
    server, conns = proxied()
    source, destination = ("2001:db8::7", 443), ("2001:db8::1", 8443)
    if version == 1:
        header = encode_v1(source, destination)
    else:
        header = encode_v2(source, destination, tlvs=[(0x04, b"x" * 40)])
    with connect(server) as client:
        for byte in header:
            client.send(bytes((byte,)))
            gevent.sleep(0.002)
        client.sendall(b"after")
        conn = conns.get(timeout=TIMEOUT)
        assert (conn.remote_address, conn.remote_port) == source
        assert conn.socket.recv(100) == b"after"
        conn.destroy()


def test_a_local_header_keeps_the_balancers_address(proxied):
    server, conns = proxied()
    with connect(server) as client:
        client.sendall(encode_v2(command="LOCAL"))
        conn = conns.get(timeout=TIMEOUT)
        assert (conn.remote_address, conn.remote_port) == client.getsockname()
        conn.destroy()


def bad_input_cases():
    return {
        "malformed": (b"GET / HTTP/1.1\r\n\r\n", {}, "connection from 127.0.0.1"),
        "silent": (b"", {"proxy_timeout": 0.3}, "no whole header within 0.3 s"),
        "truncated": (PROXY_V1[:20], {"proxy_timeout": 0.3}, "no whole header within 0.3 s"),
        "not allowed": (PROXY_V1, {"proxy_allow": ["10.0.0.0/8"]}, "not in the allowed networks"),
    }


@pytest.mark.parametrize("case", sorted(bad_input_cases()))
def test_a_connection_whose_header_is_not_believed_is_closed_and_logged_once(proxied, caplog, case):
    sent, options, says = bad_input_cases()[case]
    server, conns = proxied(**options)
    baseline = fd_count()
    with caplog.at_level(logging.WARNING, logger="geventfork.net"):
        with connect(server) as client:
            client.sendall(sent)
            started = gevent.get_hub().loop.now()
            assert read_to_eof(client) == b""  # a clean EOF, within the bound
            assert gevent.get_hub().loop.now() - started < 2.0
    lines = [r.getMessage() for r in caplog.records if "PROXY protocol" in r.getMessage()]
    assert len(lines) == 1 and says in lines[0], lines
    assert conns.empty()  # never emitted
    wait_until(lambda: fd_count() <= baseline, "the connection's fd closed")


def test_a_bad_allowed_network_is_refused_by_name():
    with pytest.raises(ValueError, match="'10.0.0.0/33' is not a network"):
        net.create_server(proxy_protocol=True, proxy_allow=["10.0.0.0/33"])


def test_the_clients_address_goes_with_the_socket_to_a_child(proxied, spawn_child):
    child = spawn_child("proxy_peer.py")
    replies = Queue()
    child.on("message", lambda message, handle: replies.put(message))
    server, conns = proxied()
    with connect(server) as client:
        client.sendall(PROXY_V1 + b"hello")
        child.send("socket", conns.get(timeout=TIMEOUT))
        assert replies.get(timeout=TIMEOUT) == [*CLIENT, "hello"]
        assert read_to_eof(client) == b"bye\n"


def test_a_server_listens_on_a_unix_socket(tmp_path):
    path = str(tmp_path / "server.sock")
    server = net.create_server(pause_on_connect=True)
    conns = Queue()
    server.on("connection", conns.put)
    server.listen(path=path)
    try:
        assert server.address() == path
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
            conn = conns.get(timeout=TIMEOUT)
            conn.end(b"hi")
            assert read_to_eof(client) == b"hi"
    finally:
        server.close()
        os.unlink(path)
