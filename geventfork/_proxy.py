"""The PROXY protocol, versions 1 and 2: a sans-IO parser and encoder.

This module does no I/O and imports no gevent: it turns the first bytes of a
connection into a ``Header``, and a ``Header``'s fields back into bytes. It
follows HAProxy's specification, ``doc/proxy-protocol.txt`` (2020/03/05).

Version 1 is one line of ASCII, at most 107 bytes with its CRLF::

    PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\\r\\n
    PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\\r\\n
    PROXY UNKNOWN[ anything]\\r\\n

Version 2 is a 16-byte header and ``len`` bytes of addresses and TLVs::

    0             12        13        14        16
    +-------------+---------+---------+---------+-----------------------+
    | signature   | ver|cmd | fam|tra | len     | addresses, then TLVs  |
    | 12 bytes    | 4b | 4b | 4b | 4b | u16 BE  | len bytes             |
    +-------------+---------+---------+---------+-----------------------+

    signature  0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A
    ver        2, nothing else
    cmd        0 LOCAL (a health check: addresses ignored), 1 PROXY
    fam        0 AF_UNSPEC, 1 AF_INET, 2 AF_INET6, 3 AF_UNIX
    tra        0 UNSPEC, 1 STREAM, 2 DGRAM
    addresses  IPv4: 4+4+2+2 = 12 bytes; IPv6: 16+16+2+2 = 36; unix: 108+108 = 216
               (source address, destination address, source port, destination port)

Rules this module keeps:

* It never asks for a byte past the header. ``parse(data)`` returns either
  the ``Header`` (whose ``length`` says how many bytes of ``data`` it took) or
  a lower bound on how many more bytes the header needs; reading that many
  cannot go past its end, whatever the rest of the header turns out to be.
* Whatever cannot begin a valid header is rejected as soon as it arrives
  (a bad signature, version, command, family or field, a bare CR or LF), so
  a peer that does not speak the protocol is dropped at once.
* A header whose source is None tells the receiver to use the connection's
  own addresses: v2 ``LOCAL``, v2 ``AF_UNSPEC`` or ``UNSPEC`` transport, and
  v1 ``UNKNOWN``. The spec requires accepting ``LOCAL`` (health checks) and
  lets a receiver reject the other two; accepting them keeps a proxy that
  cannot fill in an address working, as HAProxy's own receiver does.
* v2 TLVs are skipped unread, as the spec allows; ``len`` always says how far.

There are two ways to read a header from a socket, and neither takes a byte
of the client's data after it:

1. Incremental, for any stream and any fragmentation (``recv(n)`` returns at
   most ``n`` bytes; ``b""`` at EOF raises ``ProxyProtocolError``)::

       parser = Parser()
       while parser.needed():
           parser.feed(sock.recv(parser.needed()))
       header = parser.header

   A v2 header takes three reads (15 bytes, as a v1 line may be that short,
   then the 16th, then the rest); a v1 line a few, each asking for the least
   its remaining fields could take (6 for the spec's example).

2. Peek, then read exactly the header: two system calls when the header
   arrives whole, as the spec requires senders to send it::

       result = parse(sock.recv(MAX_PEEK, socket.MSG_PEEK))
       if isinstance(result, Header):
           sock.recv(result.length)  # the bytes just peeked
       else:
           ...  # incomplete: a peek cannot wait for more, so use way 1
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import struct
from dataclasses import dataclass
from typing import Callable, Dict, List, Literal, NoReturn, Optional, Sequence, Tuple, Union

from .errors import ProxyProtocolError

__all__ = [
    "V2_SIGNATURE",
    "V1_MAX_LENGTH",
    "MAX_PEEK",
    "ProxyProtocolError",
    "Header",
    "Parser",
    "parse",
    "encode_v1",
    "encode_v2",
]

#: The 12 bytes that begin every v2 header.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: The longest v1 line, CRLF included ("PROXY UNKNOWN" and two full IPv6
#: addresses and ports): a line without CRLF in its first 107 bytes is invalid.
V1_MAX_LENGTH = 107
#: What to peek at for way 2: the spec's 536-byte segment, which "any TCP/IP
#: host is required to support" and in which both formats are meant to fit.
MAX_PEEK = 536

_V1_PREFIX = b"PROXY "
#: The shortest header of either version: ``PROXY UNKNOWN\r\n``.
_MIN_LENGTH = 15
_V2_FIXED = struct.Struct("!12sBBH")  # signature, ver|cmd, fam|transport, len
_V2_FIXED_SIZE = _V2_FIXED.size  # 16
_V2_VERSION = 2
_LOCAL, _PROXY = 0, 1
_UNSPEC, _INET, _INET6, _UNIX = 0, 1, 2, 3
_STREAM, _DGRAM = 1, 2
#: The address block each family needs at least (``len`` may be larger: TLVs).
_V2_ADDRESS_SIZE = {_INET: 12, _INET6: 36, _UNIX: 216}
_UNIX_PATH_SIZE = 108  # sun_path

Family = Literal["IPv4", "IPv6", "unix", "unspec"]
Transport = Literal["stream", "dgram", "unspec"]
_FAMILY_NAMES: Dict[int, Family] = {_UNSPEC: "unspec", _INET: "IPv4", _INET6: "IPv6", _UNIX: "unix"}
_TRANSPORT_NAMES: Dict[int, Transport] = {_UNSPEC: "unspec", _STREAM: "stream", _DGRAM: "dgram"}
#: What ``parse`` reads: any bytes-like, so a caller's buffer is not copied.
Buffer = Union[bytes, bytearray, memoryview]


@dataclass(frozen=True)
class Header:
    """One parsed PROXY header.

    ``source_address`` is None when the receiver must use the connection's
    own addresses (v2 ``LOCAL`` or ``AF_UNSPEC``, v1 ``UNKNOWN``). Addresses
    are text as ``getpeername()`` gives them (``inet_ntop``); a unix address
    is the socket's path ("" for an unnamed socket, "\\0..." for an abstract
    one), and has no port.

    Attributes:
        version: 1 or 2.
        command: "PROXY", or "LOCAL" (v2 only: the proxy's own connection,
            such as a health check).
        family: "IPv4", "IPv6", "unix" or "unspec".
        transport: "stream", "dgram" or "unspec".
        source_address: the client's address, or None.
        source_port: the client's port, or None.
        destination_address: the address the client connected to, or None.
        destination_port: the port the client connected to, or None.
        length: the header's size in bytes; the client's data begins there.
    """

    version: int
    command: Literal["PROXY", "LOCAL"]
    family: Family
    transport: Transport
    source_address: Optional[str]
    source_port: Optional[int]
    destination_address: Optional[str]
    destination_port: Optional[int]
    length: int


def _fail(msg: str, data: Buffer) -> NoReturn:
    raise ProxyProtocolError(msg, data)


def _without_addresses(version: int, command: Literal["PROXY", "LOCAL"], length: int) -> Header:
    """A header that tells the receiver to use the connection's own addresses."""
    return Header(version, command, "unspec", "unspec", None, None, None, None, length)


def parse(data: Buffer) -> Union[Header, int]:
    """Parse the PROXY header at the start of ``data``.

    Args:
        data: the connection's first bytes; bytes past the header are
            allowed and left alone (the client's data).

    Returns:
        The ``Header``, or, while it is incomplete, how many more bytes it
        needs at least (> 0): reading that many never goes past its end.

    Raises:
        ProxyProtocolError: ``data`` cannot begin a valid header.
    """
    if not data:
        return _MIN_LENGTH
    if data[0] == V2_SIGNATURE[0]:
        return _parse_v2(data)
    if data[0] == _V1_PREFIX[0]:
        return _parse_v1(data)
    _fail("not a PROXY protocol header: it begins with neither 'PROXY' nor the v2 signature", data)


# ---------------------------------------------------------------- version 2


def _parse_v2(data: Buffer) -> Union[Header, int]:
    """``parse`` for data that begins like the v2 signature."""
    _check_v2_prefix(data)
    if len(data) < _V2_FIXED_SIZE:
        return _V2_FIXED_SIZE - len(data)
    ver_cmd, fam = data[12], data[13]
    length: int = _V2_FIXED_SIZE + int.from_bytes(data[14:16], "big")
    if len(data) < length:
        return length - len(data)
    block = bytes(data[_V2_FIXED_SIZE:length])
    if ver_cmd & 0x0F == _LOCAL:
        return _without_addresses(2, "LOCAL", length)
    family, transport = fam >> 4, fam & 0x0F
    if family == _UNSPEC or transport == _UNSPEC:
        # "The receiver should ignore address information."
        return _without_addresses(2, "PROXY", length)
    addresses = _V2_ADDRESS_READERS[family](block)
    return Header(
        2, "PROXY", _FAMILY_NAMES[family], _TRANSPORT_NAMES[transport], *addresses, length
    )


def _check_v2_prefix(data: Buffer) -> None:
    """Reject ``data`` as soon as its first 16 bytes cannot begin a v2 header."""
    head = bytes(data[:_V2_FIXED_SIZE])
    if not head.startswith(V2_SIGNATURE[: len(head)]):
        _fail("not a PROXY protocol header: bad v2 signature", head)
    if len(head) > 12:
        version, command = head[12] >> 4, head[12] & 0x0F
        if version != _V2_VERSION:
            _fail(f"PROXY v2: unsupported version {version} (only 2 exists)", head)
        if command not in (_LOCAL, _PROXY):
            _fail(f"PROXY v2: unknown command {command} (0 LOCAL and 1 PROXY exist)", head)
        if command == _LOCAL:
            return  # "discard the protocol block including the family"
    if len(head) > 13:
        family, transport = head[13] >> 4, head[13] & 0x0F
        if family not in _FAMILY_NAMES:
            _fail(f"PROXY v2: unknown address family {family} (0 to 3 exist)", head)
        if transport not in _TRANSPORT_NAMES:
            _fail(f"PROXY v2: unknown transport {transport} (0 to 2 exist)", head)
    if len(head) == _V2_FIXED_SIZE:
        _check_v2_size(head)


def _check_v2_size(head: bytes) -> None:
    """Reject a PROXY command whose ``len`` cannot hold its family's addresses."""
    _, _, fam, size = _V2_FIXED.unpack(head)
    family, transport = fam >> 4, fam & 0x0F
    if family == _UNSPEC or transport == _UNSPEC:
        return
    need = _V2_ADDRESS_SIZE[family]
    if size < need:
        name = _FAMILY_NAMES[family]
        _fail(f"PROXY v2: len {size} is too small for {name} addresses ({need} bytes)", head)


def _read_inet(block: bytes) -> Tuple[str, int, str, int]:
    src, dst, sport, dport = struct.unpack_from("!4s4sHH", block)
    return (
        socket.inet_ntop(socket.AF_INET, src),
        sport,
        socket.inet_ntop(socket.AF_INET, dst),
        dport,
    )


def _read_inet6(block: bytes) -> Tuple[str, int, str, int]:
    src, dst, sport, dport = struct.unpack_from("!16s16sHH", block)
    return _ipv6_text(src), sport, _ipv6_text(dst), dport


def _read_unix(block: bytes) -> Tuple[str, None, str, None]:
    src, dst = struct.unpack_from("!108s108s", block)
    return _unix_text(src), None, _unix_text(dst), None


_V2_ADDRESS_READERS: Dict[int, Callable[[bytes], Tuple[str, Optional[int], str, Optional[int]]]] = {
    _INET: _read_inet,
    _INET6: _read_inet6,
    _UNIX: _read_unix,
}


def _ipv6_text(packed: bytes) -> str:
    # inet_ntop, not ipaddress: the text getpeername() gives for a direct
    # connection, the same in every Python version.
    return socket.inet_ntop(socket.AF_INET6, packed)


def _unix_text(raw: bytes) -> str:
    """A 108-byte ``sun_path``, as ``getpeername()`` would give it."""
    if raw[:1] == b"\0":
        return os.fsdecode(raw.rstrip(b"\0"))  # abstract ("\0name"), or unnamed ("")
    return os.fsdecode(raw.split(b"\0", 1)[0])


# ---------------------------------------------------------------- version 1

_DECIMAL_OCTET = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE = re.compile(_DECIMAL_OCTET + rb"(?:\." + _DECIMAL_OCTET + rb"){3}")
_IPV6_CHARS_RE = re.compile(rb"[0-9A-Fa-f:.]+")
_PORT_RE = re.compile(rb"0|[1-9][0-9]{0,4}")
_FIELD_NAMES = ("source address", "destination address", "source port", "destination port")


def _parse_v1(data: Buffer) -> Union[Header, int]:
    """``parse`` for data that begins with ``P``."""
    head = bytes(data[:V1_MAX_LENGTH])
    end = head.find(b"\r\n")
    # A line that ends in CR is checked whole at once: only its LF may follow.
    ended = end >= 0 or head.endswith(b"\r")
    line = head[:end] if end >= 0 else head[:-1] if ended else head
    if b"\n" in line or b"\r" in line:
        _fail("PROXY v1: a CR or LF inside the line (it must end with CRLF)", head)
    if end < 0 and len(head) >= V1_MAX_LENGTH:
        _fail(f"PROXY v1: no CRLF in the first {V1_MAX_LENGTH} bytes", head)
    fields = line.split(b" ")
    values = _check_v1_fields(fields, ended, head)
    if not ended:
        return _v1_needed(fields, head)
    header = _v1_header(fields, values, end + 2, head)
    return header if end >= 0 else 1


def _check_v1_fields(fields: Sequence[bytes], ended: bool, head: bytes) -> List[Union[str, int]]:
    """Check the fields that a space or the CRLF has ended, and their count.

    Args:
        fields: the line's fields so far.
        ended: whether the line has ended (in CRLF, or in a CR that only an
            LF may follow); else its last field may grow.
        head: the line so far, the error's evidence.

    Returns:
        The values of the address and port fields checked so far.
    """
    if not head.startswith(_V1_PREFIX[: len(head)]):
        _fail("not a PROXY protocol header: it does not begin with 'PROXY '", head)
    if len(fields) < 2:
        return []
    protocol = fields[1]
    if len(fields) == 2 and not ended:
        if not any(name.startswith(protocol) for name in _V1_PROTOCOLS):
            _fail(f"PROXY v1: unknown protocol {_show(protocol)} (TCP4, TCP6 or UNKNOWN)", head)
        return []
    if protocol not in _V1_PROTOCOLS:
        _fail(f"PROXY v1: unknown protocol {_show(protocol)} (TCP4, TCP6 or UNKNOWN)", head)
    if protocol == b"UNKNOWN":
        return []  # "the receiver must ignore anything presented before the CRLF"
    done = fields[2:] if ended else fields[2:-1]
    if not all(done):
        _fail("PROXY v1: fields must be separated by exactly one space", head)
    if len(fields) > 6:
        _fail("PROXY v1: more than 6 fields", head)
    return [check(n, f, head) for n, check, f in zip(_FIELD_NAMES, _V1_CHECKERS[protocol], done)]


def _v1_needed(fields: Sequence[bytes], head: bytes) -> int:
    """How many more bytes an incomplete line needs at least (> 0).

    The least any valid completion takes: the rest of the field being read,
    then for each later field a space and its shortest form, then CRLF.
    """
    least = 2  # CRLF
    if len(fields) > 2 and fields[1] != b"UNKNOWN":
        shortest = _V1_SHORTEST[fields[1]]
        current = len(fields) - 3  # index of the field being read, 0..3
        least += max(shortest[current] - len(fields[-1]), 0)
        least += sum(1 + n for n in shortest[current + 1 :])
    return max(least, _MIN_LENGTH - len(head))


def _v1_header(
    fields: Sequence[bytes], values: Sequence[Union[str, int]], length: int, head: bytes
) -> Header:
    """The header of a complete line, from its fields and their checked values."""
    if fields[1] == b"UNKNOWN":
        return _without_addresses(1, "PROXY", length)
    if len(values) != 4:
        _fail(f"PROXY v1: {len(fields)} fields, not 6", head)
    src, dst, sport, dport = values
    family: Family = "IPv4" if fields[1] == b"TCP4" else "IPv6"
    return Header(1, "PROXY", family, "stream", str(src), int(sport), str(dst), int(dport), length)


def _show(field: bytes) -> str:
    """A field for an error message: quoted, one line, at most 45 characters."""
    return repr(field[:45].decode("ascii", "backslashreplace"))


def _v1_ipv4(name: str, field: bytes, head: bytes) -> str:
    if not _IPV4_RE.fullmatch(field):
        _fail(f"PROXY v1: {name} {_show(field)} is not IPv4 (a.b.c.d, no leading zero)", head)
    return field.decode("ascii")


def _v1_ipv6(name: str, field: bytes, head: bytes) -> str:
    # ipaddress alone would take a "%zone" suffix; the character check
    # leaves it the hex groups, one "::" and an IPv4 tail ("::ffff:1.2.3.4",
    # which inet_ntop writes and so HAProxy sends), held to the IPv4 rule
    # here because ipaddress before 3.9.5 took leading zeroes in it.
    try:
        if not _IPV6_CHARS_RE.fullmatch(field):
            raise ValueError
        if b"." in field and not _IPV4_RE.fullmatch(field.rsplit(b":", 1)[-1]):
            raise ValueError
        packed = ipaddress.IPv6Address(field.decode("ascii")).packed
    except ValueError:
        _fail(f"PROXY v1: {name} {_show(field)} is not IPv6", head)
    return _ipv6_text(packed)


def _v1_port(name: str, field: bytes, head: bytes) -> int:
    if not _PORT_RE.fullmatch(field) or int(field) > 0xFFFF:
        _fail(f"PROXY v1: {name} {_show(field)} is not 0 to 65535 (no leading zero)", head)
    return int(field)


_Checker = Callable[[str, bytes, bytes], Union[str, int]]
_V1_CHECKERS: Dict[bytes, Tuple[_Checker, _Checker, _Checker, _Checker]] = {
    b"TCP4": (_v1_ipv4, _v1_ipv4, _v1_port, _v1_port),
    b"TCP6": (_v1_ipv6, _v1_ipv6, _v1_port, _v1_port),
}
_V1_PROTOCOLS = (b"TCP4", b"TCP6", b"UNKNOWN")
#: The shortest form of each field after the protocol: "0.0.0.0", "::", "0".
_V1_SHORTEST = {b"TCP4": (7, 7, 1, 1), b"TCP6": (2, 2, 1, 1)}


# ---------------------------------------------------------------- incremental reads


class Parser:
    """Read one PROXY header from a stream, never asking for a byte past it.

    ``needed()`` says how many bytes to read next (0 once the header is
    complete); ``feed()`` takes what was read. See the module's docstring.
    After a ``ProxyProtocolError`` the parser is of no further use.

    Attributes:
        header: the ``Header`` once complete, else None.
        trailing: bytes fed past the header (never any for a caller that
            reads at most ``needed()`` bytes at a time): the client's data.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._needed = _MIN_LENGTH
        self.header: Optional[Header] = None
        self.trailing = b""

    def needed(self) -> int:
        """How many bytes to read next: the least the header still needs, 0 when complete."""
        return self._needed

    def feed(self, data: Buffer) -> Optional[Header]:
        """Take the bytes just read.

        Args:
            data: at most ``needed()`` bytes for a caller that wants the
                client's data left unread; more are kept in ``trailing``.
                ``b""`` means EOF.

        Returns:
            The ``Header`` once complete, else None.

        Raises:
            ProxyProtocolError: the header is malformed, or EOF came first.
            RuntimeError: the header was already complete.
        """
        if self.header is not None:
            raise RuntimeError("the PROXY header is complete: what follows is the client's data")
        if not data:
            _fail(
                f"the connection closed after {len(self._buffer)} bytes of a PROXY header",
                self._buffer,
            )
        self._buffer += data
        result = parse(self._buffer)
        if isinstance(result, int):
            self._needed = result
            return None
        self._needed = 0
        self.header = result
        self.trailing = bytes(self._buffer[result.length :])
        self._buffer = bytearray()
        return result


# ---------------------------------------------------------------- encoding

Address = Tuple[str, int]


def encode_v1(source: Optional[Address] = None, destination: Optional[Address] = None) -> bytes:
    """The v1 line for a TCP connection from ``source`` to ``destination``.

    Args:
        source: the client's (address, port), IPv4 or IPv6.
        destination: the (address, port) it connected to, of the same family.
            With neither, the line is ``PROXY UNKNOWN\\r\\n``.

    Raises:
        ValueError: one address without the other, an address that is not
            IP, two families, or a port out of range.
    """
    if source is None and destination is None:
        return b"PROXY UNKNOWN\r\n"
    if source is None or destination is None:
        raise ValueError("give both addresses, or neither (UNKNOWN)")
    src, dst = _ip(source), _ip(destination)
    if src.version != dst.version:
        raise ValueError("source and destination must be of one family")
    text = [_ip_text(src), _ip_text(dst), str(_port(source)), str(_port(destination))]
    return f"PROXY TCP{src.version} {' '.join(text)}\r\n".encode("ascii")


def encode_v2(
    source: Union[Address, str, None] = None,
    destination: Union[Address, str, None] = None,
    *,
    command: Literal["PROXY", "LOCAL"] = "PROXY",
    transport: Literal["stream", "dgram"] = "stream",
    tlvs: Sequence[Tuple[int, bytes]] = (),
) -> bytes:
    """The v2 header for a connection from ``source`` to ``destination``.

    Args:
        source: the client's (address, port), or a unix socket's path.
        destination: the (address, port) or path it connected to.
            With neither, the family is AF_UNSPEC.
        command: "LOCAL" for a connection of the proxy's own (addresses
            must then be None).
        transport: "stream" (TCP, SOCK_STREAM) or "dgram".
        tlvs: (type, value) pairs appended after the addresses.

    Raises:
        ValueError: mismatched or invalid addresses, a path longer than 108
            bytes, a TLV or a header too long.
    """
    if command == "LOCAL" and (source is not None or destination is not None):
        raise ValueError("a LOCAL header carries no addresses")
    family, block = _v2_addresses(source, destination)
    tra = {"stream": _STREAM, "dgram": _DGRAM}[transport] if family != _UNSPEC else _UNSPEC
    extra = b"".join(_tlv(kind, value) for kind, value in tlvs)
    size = len(block) + len(extra)
    if size > 0xFFFF:
        raise ValueError(f"a v2 header holds at most 65535 bytes after its first 16, not {size}")
    cmd = _LOCAL if command == "LOCAL" else _PROXY
    fixed = _V2_FIXED.pack(V2_SIGNATURE, _V2_VERSION << 4 | cmd, family << 4 | tra, size)
    return fixed + block + extra


def _v2_addresses(
    source: Union[Address, str, None], destination: Union[Address, str, None]
) -> Tuple[int, bytes]:
    """The family number and address block of a v2 header."""
    if source is None and destination is None:
        return _UNSPEC, b""
    if isinstance(source, str) and isinstance(destination, str):
        paths = [os.fsencode(source), os.fsencode(destination)]
        if max(map(len, paths)) > _UNIX_PATH_SIZE:
            raise ValueError(f"a unix socket path holds at most {_UNIX_PATH_SIZE} bytes")
        return _UNIX, struct.pack("!108s108s", *paths)
    if not isinstance(source, tuple) or not isinstance(destination, tuple):
        raise ValueError("give two (address, port) pairs, two paths, or neither")
    src, dst = _ip(source), _ip(destination)
    if src.version != dst.version:
        raise ValueError("source and destination must be of one family")
    ports = struct.pack("!HH", _port(source), _port(destination))
    return (_INET if src.version == 4 else _INET6), src.packed + dst.packed + ports


def _tlv(kind: int, value: bytes) -> bytes:
    if not 0 <= kind <= 0xFF or len(value) > 0xFFFF:
        raise ValueError("a TLV's type is 0 to 255 and its value at most 65535 bytes")
    return struct.pack("!BH", kind, len(value)) + value


def _ip(address: Address) -> Union[ipaddress.IPv4Address, ipaddress.IPv6Address]:
    try:
        return ipaddress.ip_address(address[0])
    except ValueError:
        raise ValueError(f"{address[0]!r} is not an IP address") from None


def _ip_text(ip: Union[ipaddress.IPv4Address, ipaddress.IPv6Address]) -> str:
    return str(ip) if ip.version == 4 else _ipv6_text(ip.packed)


def _port(address: Address) -> int:
    port = address[1]
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port!r} is not 0 to 65535")
    return port
