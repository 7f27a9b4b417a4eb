"""The gevent side of the PROXY protocol: read a header off an accepted connection.

A server behind a load balancer (HAProxy's ``send-proxy``/``send-proxy-v2``)
gets the balancer's address from ``accept``; the balancer writes the client's
address first, in a PROXY protocol header (``_proxy`` parses it). Here the
header is read with loop watchers, no greenlet per connection, and exactly:
not one byte of the client's data after it, which stays unread in the kernel
for whoever serves the connection (a worker, after a hand-off).

Trust: the header is believed only from the networks in ``allow``, by
default loopback; a connection from anywhere else, a malformed header, or
one not complete within ``timeout`` seconds is closed and logged in one line,
and never reaches ``'connection'``.
"""

from __future__ import annotations

import ipaddress
import logging
import socket as _stdlib_socket
from typing import Any, Callable, List, Optional, Sequence, Union

import gevent

from ._lifetime import DONTWAIT, Accepted, HostPort, close_later, host_port, parse_ip
from ._proxy import MAX_PEEK, Header, Parser, parse
from .errors import ProxyProtocolError

__all__ = ["ProxyPolicy", "LOOPBACK", "TIMEOUT"]

log = logging.getLogger("geventfork.net")

#: Who may send a header by default: this machine only.
LOOPBACK = ("127.0.0.0/8", "::1/128")
#: Seconds a connection has to send its whole header (HAProxy sends it at once).
TIMEOUT = 5.0

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
#: ``done(sock, peer)``: the header was read; ``peer`` is the client's
#: ``(host, port)``, or None to keep the connection's own (a ``LOCAL`` header).
Done = Callable[[Any, Optional[HostPort]], None]


class ProxyPolicy:
    """Whose PROXY headers a server believes, and for how long it waits for one.

    Args:
        allow: networks (``"10.0.0.0/8"``, ``"::1"``) whose connections must
            start with a header; any other connection is closed.
        timeout: seconds to wait for the whole header.

    Raises:
        ValueError: a network that is not one (the message names it).
    """

    def __init__(self, allow: Sequence[str] = LOOPBACK, timeout: float = TIMEOUT) -> None:
        self.networks: List[Network] = []
        for network in allow:
            try:
                self.networks.append(ipaddress.ip_network(network.strip(), strict=False))
            except ValueError:
                raise ValueError(
                    f"proxy_allow: {network!r} is not a network such as 10.0.0.0/8 or ::1"
                ) from None
        if timeout <= 0:
            raise ValueError(f"proxy_timeout must be more than 0 seconds, not {timeout}")
        self.timeout = timeout

    def allows(self, host: Optional[str]) -> bool:
        """Whether a connection from ``host`` may send a header (a Unix socket's may)."""
        if not host or host.startswith("/") or host.startswith("\0"):
            return True  # a Unix socket: only this machine's processes reach it
        address = parse_ip(host)
        return address is not None and any(address in network for network in self.networks)

    def read(self, accepted: Accepted, address: Any, done: Done) -> None:
        """Read ``accepted``'s header, then ``done(sock, peer)``; or close it.

        Runs in the hub (the accept loop) and never blocks.
        """
        peer = host_port(address)
        if not self.allows(peer[0]):
            _refuse(accepted.to_socket(), peer, "not in the allowed networks (proxy_allow)")
            return
        _HeaderRead(accepted.to_socket(), peer, self.timeout, done).start()


class _HeaderRead:
    """One connection's header, read as its bytes arrive."""

    __slots__ = ("sock", "peer", "timeout", "done", "parser", "watchers")

    def __init__(self, sock: Any, peer: HostPort, timeout: float, done: Done) -> None:
        self.sock = sock
        self.peer = peer
        self.timeout = timeout
        self.done = done
        self.parser: Optional[Parser] = None  # once a peek found the header incomplete
        self.watchers: Any = None

    def start(self) -> None:
        if self._try():  # the header is usually there by the time accept returns
            return
        loop = gevent.get_hub().loop
        self.watchers = (loop.io(self.sock.fileno(), 1), loop.timer(self.timeout))
        self.watchers[0].start(self._readable)
        self.watchers[1].start(self._fail, f"no whole header within {self.timeout:g} s")

    def _readable(self) -> None:
        self._try()

    def _try(self) -> bool:
        """Read what has arrived; True once finished (header read, or failed)."""
        try:
            header = self._read()
        except BlockingIOError:
            return False
        except ProxyProtocolError as exc:
            self._fail(str(exc))
            return True
        except OSError as exc:
            self._fail(f"the connection failed: {exc.strerror or exc}")
            return True
        if header is None:
            return False
        self._stop()
        peer = None
        if header.source_address is not None and header.family in ("IPv4", "IPv6"):
            peer = (header.source_address, header.source_port)
        self.done(self.sock, peer)
        return True

    def _read(self) -> Optional[Header]:
        """The header if whole now; None (or BlockingIOError) while incomplete.

        First a peek: the header usually arrived in one piece, and then it
        costs two system calls. If not, a ``Parser`` reads it piecewise,
        never asking for more than the header's remaining bytes.
        """
        sock = self.sock
        if self.parser is None:
            data = sock.recv(MAX_PEEK, _stdlib_socket.MSG_PEEK | DONTWAIT)
            if not data:
                raise ProxyProtocolError("the connection closed before its header")
            result = parse(data)
            if isinstance(result, Header):
                sock.recv(result.length, DONTWAIT)  # the bytes just peeked
                return result
            self.parser = Parser()
        parser = self.parser
        while parser.needed():
            parser.feed(sock.recv(parser.needed(), DONTWAIT))  # b"" (EOF) raises
        return parser.header

    def _fail(self, reason: str) -> None:
        self._stop()
        _refuse(self.sock, self.peer, reason)

    def _stop(self) -> None:
        if self.watchers is not None:
            for watcher in self.watchers:
                watcher.stop()
                watcher.close()
            self.watchers = None


def _refuse(sock: Any, peer: HostPort, reason: str) -> None:
    """Close a connection whose header is not believed, with one warning line."""
    host, port = peer
    who = f"{host}:{port}" if port is not None else str(host or "a Unix socket")
    log.warning("PROXY protocol: connection from %s closed: %s", who, reason)
    close_later(sock, True, None)
