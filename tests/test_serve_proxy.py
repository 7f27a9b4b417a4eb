"""``geventfork serve --proxy-protocol``: the client a PROXY header names picks
the pool and is the one the worker and its access log see.

The real command (``python -m geventfork serve``, the fixture of
``test_serve.py``) and raw sockets that write the header as a load balancer
does (``encode_v1``/``encode_v2``), then an HTTP request. The answers of
``tests/apps/peerapp.py`` name the worker's pid and the ``REMOTE_ADDR`` and
``REMOTE_PORT`` it saw. The test with a real HAProxy is ``test_haproxy.py``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import subprocess
import sys
import time

import gevent
import pytest
from helpers import TIMEOUT, python_env, read_to_eof
import test_serve
from test_serve import Served, settled_fd_count

from geventfork._proxy import encode_v1, encode_v2
from geventfork.serve import config
from geventfork.serve.settings import PROXY_ALLOW, Settings

#: ``serve(TARGET, *options)``: the fixture of ``test_serve.py`` that starts a server.
serve = test_serve.serve

pytestmark = pytest.mark.timeout(90)

SPECIAL = "198.51.100.0/24"
#: Where the server listens, as the balancer's header names it.
SERVER = ("127.0.0.1", 8000)
REQUEST = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"
#: The log line of a connection whose header is not believed.
REFUSED = r"\[WARNING\] PROXY protocol: connection from 127\.0\.0\.1:{port} closed: "


# -- helpers ------------------------------------------------------------------------


def start(serve, *options: str, access_log=None) -> Served:
    """``peerapp`` behind ``--proxy-protocol``, with a pool for SPECIAL clients."""
    args = ["peerapp:app", "-w", "1", "--route", f"{SPECIAL}=special:1", "--proxy-protocol"]
    if access_log is not None:
        args += ["--access-log", str(access_log)]
    return serve(*args, *options).started(pools=("default", "special"))


def connect(served: Served, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", served.port), timeout=TIMEOUT, source_address=(source, 0)
    )


class Responses:
    """Reads the 200 responses (with a Content-Length) that come on one connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = b""  # received, not yet returned: the next responses' start

    def next(self) -> bytes:
        """The next response's body."""
        while b"\r\n\r\n" not in self.data:
            self._recv()
        head, _, self.data = self.data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        while len(self.data) < length:
            self._recv()
        body, self.data = self.data[:length], self.data[length:]
        return body

    def _recv(self) -> None:
        chunk = self.sock.recv(4096)
        assert chunk, f"EOF inside a response: {self.data!r}"
        self.data += chunk


def read_response(sock: socket.socket) -> bytes:
    """The body of the one response ``sock`` gets."""
    return Responses(sock).next()


def answer(served: Served, header: bytes, source: str = "127.0.0.1"):
    """Send ``header`` and a request on a new connection: (pid, address, port)."""
    with connect(served, source) as sock:
        sock.sendall(header + REQUEST)
        pid, address, port = read_response(sock).decode().split()
        return int(pid), address, int(port), sock.getsockname()[1]


def access_lines(path, count: int) -> list:
    """The access log's lines, once it has ``count`` of them."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        gevent.sleep(0.05)


def pool_of(served: Served, pid: int) -> str:
    (name,) = [name for name, pids in served.pids.items() if pid in pids]
    return name


# -- the header's client: routing, the worker, the access log ---------------------------


def test_the_headers_client_picks_the_pool_and_is_in_the_access_log(serve, tmp_path):
    log = tmp_path / "access.log"
    served = start(serve, access_log=log)
    cases = [
        (encode_v1(("198.51.100.9", 4444), SERVER), "198.51.100.9", 4444, "special"),
        (encode_v2(("198.51.100.200", 5555), SERVER), "198.51.100.200", 5555, "special"),
        (encode_v1(("203.0.113.5", 6666), SERVER), "203.0.113.5", 6666, "default"),
        (encode_v2(("2001:db8::7", 7777), ("::1", 8000)), "2001:db8::7", 7777, "default"),
    ]
    for header, address, port, pool in cases:
        pid, seen, seen_port, _ = answer(served, header)
        assert (seen, seen_port, pool_of(served, pid)) == (address, port, pool)
    lines = access_lines(log, len(cases))
    assert len(lines) == len(cases), lines
    # One line each; two workers write them, each once its response is out,
    # so not necessarily in the order of the requests.
    for _, address, _, pool in cases:
        (line,) = [line for line in lines if line.startswith(f"{address} - - [")]
        assert '"GET /x HTTP/1.1" 200' in line and f" pool={pool} pid=" in line, line


def test_a_local_header_keeps_the_balancers_address(serve, tmp_path):
    log = tmp_path / "access.log"
    served = start(serve, "--route", "127.0.0.2/32=special", access_log=log)
    pid, address, port, own_port = answer(served, encode_v2(command="LOCAL"), "127.0.0.2")
    assert (address, port, pool_of(served, pid)) == ("127.0.0.2", own_port, "special")
    (line,) = access_lines(log, 1)
    assert line.startswith("127.0.0.2 - - [") and " pool=special " in line, line


def test_the_headers_client_stays_with_a_connection_handed_back_and_on(serve, tmp_path):
    """After its worker retired (``--max-requests``), a keep-alive connection goes
    back to the parent and on to the new worker: still the header's client's."""
    log = tmp_path / "access.log"
    served = start(serve, "--max-requests", "2", access_log=log)
    with connect(served) as sock:
        sock.sendall(encode_v2(("198.51.100.9", 4444), SERVER) + REQUEST + REQUEST)
        responses = Responses(sock)
        first = [responses.next().decode() for _ in range(2)]
        replacement = int(served.wait_for(r"pool special: worker (\d+) started").group(1))
        sock.sendall(REQUEST)
        last = responses.next().decode()
    retired = served.pids["special"][0]
    assert first == [f"{retired} 198.51.100.9 4444"] * 2
    assert last == f"{replacement} 198.51.100.9 4444"
    lines = access_lines(log, 3)
    assert len(lines) == 3 and all(line.startswith("198.51.100.9 - - [") for line in lines), lines
    assert len([line for line in lines if f" pool=special pid={replacement}" in line]) == 1, lines


def test_a_unix_bind_reads_the_header_too(serve, tmp_path):
    path = str(tmp_path / "proxied.sock")
    served = serve(
        "peerapp:app", "-w", "1", "--route", f"{SPECIAL}=special:1", "--proxy-protocol",
        "-b", f"unix:{path}", bind=False,
    ).started(pools=("default", "special"))  # fmt: skip
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        sock.sendall(encode_v2(("198.51.100.9", 4444), SERVER) + REQUEST)
        body = read_response(sock).decode()
    assert body == f"{served.pids['special'][0]} 198.51.100.9 4444"


# -- connections whose header is not believed -------------------------------------------


@pytest.mark.parametrize(
    "options, sent, reason",
    [
        ((), REQUEST, "not a PROXY protocol header"),
        ((), b"PROXY TCP4 198.51.100.9 nowhere 1 2\r\n" + REQUEST, "'nowhere' is not IPv4"),
        ((), b"", "closed before its header"),
        (("--proxy-timeout", "0.3"), b"PROXY TCP4 198.51", "no whole header within 0.3 s"),
        (
            ("--proxy-allow", "192.0.2.0/24,2001:db8::/32"),
            encode_v1(("198.51.100.9", 4444), SERVER) + REQUEST,
            "not in the allowed networks",
        ),
    ],
    ids=["no-header", "malformed", "eof", "timeout", "not-allowed"],
)
def test_a_connection_whose_header_is_not_believed_is_closed_once_and_never_served(
    serve, tmp_path, options, sent, reason
):
    log = tmp_path / "access.log"
    served = start(serve, *options, access_log=log)
    parent = served.proc.pid
    before = settled_fd_count(parent)
    ports = []
    for _ in range(3):
        with connect(served) as sock:
            ports.append(sock.getsockname()[1])
            if sent:
                sock.sendall(sent)
            if not sent or sent.endswith(b"\r\n\r\n"):
                sock.shutdown(socket.SHUT_WR)
            assert read_to_eof(sock) == b""  # closed: no worker ever answered
    for port in ports:
        line = served.wait_for(REFUSED.format(port=port)).string
        assert reason in line, line
    assert settled_fd_count(parent, before) == before
    refused = [line for line in served.lines if "PROXY protocol: connection from" in line]
    assert len(refused) == len(ports), served.log()
    if "--proxy-allow" not in options:
        # A client the server believes is served as before, and was the only one.
        assert answer(served, encode_v1(("203.0.113.5", 6666), SERVER))[1] == "203.0.113.5"
        lines = access_lines(log, 1)
        assert len(lines) == 1 and lines[0].startswith("203.0.113.5 - - ["), lines


# -- the options -------------------------------------------------------------------------


def test_the_options_and_their_defaults():
    settings = config.parse(["app:app"])
    assert settings.proxy_protocol is False
    assert [str(n) for n in settings.proxy_allow] == list(PROXY_ALLOW)
    assert settings.proxy_timeout == 5.0
    settings = config.parse(
        ["app:app", "--proxy-protocol", "--proxy-allow", "10.0.0.0/8, ::1",
         "--proxy-allow", "192.0.2.7", "--proxy-timeout", "0.5"]
    )  # fmt: skip
    assert settings.proxy_protocol is True
    assert settings.proxy_allow == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("192.0.2.7/32"),
    ]
    assert settings.proxy_timeout == 0.5


def test_the_config_file_sets_them(tmp_path):
    path = tmp_path / "conf.py"
    path.write_text(
        'proxy_protocol = True\nproxy_allow = ["10.1.0.0/16", "10.2.0.0/16,::1"]\n'
        "proxy_timeout = 2\n"
    )
    settings = config.parse(["app:app", "-c", str(path)])
    assert settings == Settings(
        target="app:app",
        config=str(path),
        proxy_protocol=True,
        proxy_allow=[ipaddress.ip_network(n) for n in ("10.1.0.0/16", "10.2.0.0/16", "::1")],
        proxy_timeout=2.0,
    )
    path.write_text('proxy_protocol = True\nproxy_allow = "10.1.0.0/16"\n')
    settings = config.parse(["app:app", "-c", str(path), "--proxy-allow", "10.9.0.0/16"])
    assert settings.proxy_allow == [ipaddress.ip_network("10.9.0.0/16")]  # replaced, not added


@pytest.mark.parametrize(
    "args, names",
    [
        (["--proxy-protocol", "--proxy-allow", "10.0.0.0/33"], ["--proxy-allow", "'10.0.0.0/33'"]),
        (["--proxy-protocol", "--proxy-allow", "10.0.0.0/8,nowhere"], ["'nowhere'"]),
        (["--proxy-protocol", "--proxy-allow", "10.0.0.0/8,"], ["''"]),
        (["--proxy-protocol", "--proxy-timeout", "0"], ["--proxy-timeout", "> 0"]),
        (["--proxy-protocol", "--proxy-timeout", "nan"], ["--proxy-timeout", "'nan'"]),
        (["--proxy-allow", "10.0.0.0/8"], ["--proxy-allow needs --proxy-protocol"]),
        (["--proxy-timeout", "3"], ["--proxy-timeout needs --proxy-protocol"]),
    ],
)
def test_a_bad_proxy_option_is_a_usage_error_naming_it(popen, args, names):
    proc = subprocess.Popen(
        [sys.executable, "-m", "geventfork", "serve", "app:app", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=python_env(),
    )
    popen.append(proc)
    _, err = proc.communicate(timeout=TIMEOUT)
    lines = err.decode().splitlines()
    assert proc.returncode == 2, lines
    assert lines[-1].startswith("geventfork serve: error: ") and "Traceback" not in err.decode()
    for name in names:
        assert name in lines[-1]


def test_a_bad_config_value_is_a_usage_error(capsys, tmp_path):
    path = tmp_path / "conf.py"
    for source, words in [
        ("proxy_protocol = 'yes'", ["proxy_protocol = 'yes'", "True or False"]),
        ("proxy_protocol = True\nproxy_allow = 10", ["proxy_allow = 10", "list of strings"]),
        ("proxy_protocol = True\nproxy_allow = ['300.0.0.1']", ["'300.0.0.1'"]),
    ]:
        path.write_text(source + "\n")
        with pytest.raises(SystemExit) as exit_info:
            config.parse(["app:app", "-c", str(path)])
        assert exit_info.value.code == 2
        line = capsys.readouterr().err.splitlines()[-1]
        assert all(word in line for word in [str(path), *words]), line


def test_help_shows_the_options_and_their_defaults(popen):
    proc = subprocess.Popen(
        [sys.executable, "-m", "geventfork", "serve", "--help"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=python_env(),
    )
    popen.append(proc)
    out, _ = proc.communicate(timeout=TIMEOUT)
    flat = " ".join(out.decode().split())
    for text in [
        "--proxy-protocol",
        "--proxy-allow CIDR[,CIDR...]",
        "[127.0.0.0/8, ::1/128]",
        "--proxy-timeout S",
        "header [5]",
    ]:
        assert text in flat, flat
