"""Tests for the sans-IO PROXY protocol parser: the spec's examples, bad input, properties.

The examples are written out by hand from HAProxy's ``doc/proxy-protocol.txt``
(v2 headers packed here field by field, not by the module's encoder). Each is
read whole, through a stream at ``needed()`` bytes a read and at one byte a
read, and at every cut, always followed by client data that must stay unread.
"""

from __future__ import annotations

import io
import operator
import os
import ipaddress
import struct
import subprocess
import sys
from typing import Callable, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geventfork._proxy import (
    MAX_PEEK,
    V1_MAX_LENGTH,
    Header,
    Parser,
    ProxyProtocolError,
    encode_v1,
    encode_v2,
    parse,
)
from geventfork.errors import GeventforkError
from helpers import TIMEOUT

#: What a client sends after the header: it must never be read by the parser.
CLIENT_DATA = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
SIG = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"  # as the spec spells it
FFFF6 = ":".join(["ffff"] * 8)  # the longest IPv6 text


def v2(ver_cmd: int, fam: int, block: bytes) -> bytes:
    """A v2 header packed by hand: signature, ver|cmd, fam|transport, len, block."""
    return SIG + bytes([ver_cmd, fam]) + struct.pack("!H", len(block)) + block


def sun_path(path: bytes) -> bytes:
    return path + b"\0" * (108 - len(path))


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


IPV4_BLOCK = bytes([172, 19, 0, 1, 172, 19, 0, 3]) + struct.pack("!HH", 42578, 80)
IPV6_BLOCK = (
    ipaddress.IPv6Address("2001:db8::1").packed
    + ipaddress.IPv6Address("::1").packed
    + struct.pack("!HH", 56324, 443)
)
TLVS = (
    tlv(0x01, b"h2")  # ALPN
    + tlv(0x02, b"example.com")  # AUTHORITY
    + tlv(0x04, b"")  # NOOP
    + tlv(0x05, b"\x01" * 128)  # UNIQUE_ID
    + tlv(0x20, b"\x01\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3"))  # SSL, VERSION
    + tlv(0xE0, b"custom")
)
ANY = (1, "PROXY", "unspec", "unspec", None, None, None, None)  # use the connection's own

#: (id, header, (version, command, family, transport, src, sport, dst, dport))
EXAMPLES: List[Tuple[str, bytes, tuple]] = [
    (
        "v1 TCP4, the spec's example",
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        (1, "PROXY", "IPv4", "stream", "192.168.0.1", 56324, "192.168.0.11", 443),
    ),
    (
        "v1 TCP4, the longest (56 bytes)",
        b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
        (1, "PROXY", "IPv4", "stream", "255.255.255.255", 65535, "255.255.255.255", 65535),
    ),
    (
        "v1 TCP4, the shortest",
        b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n",
        (1, "PROXY", "IPv4", "stream", "0.0.0.0", 0, "0.0.0.0", 0),
    ),
    (
        "v1 TCP6",
        b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n",
        (1, "PROXY", "IPv6", "stream", "2001:db8::1", 56324, "2001:db8::2", 443),
    ),
    (
        "v1 TCP6, the longest (104 bytes)",
        f"PROXY TCP6 {FFFF6} {FFFF6} 65535 65535\r\n".encode(),
        (1, "PROXY", "IPv6", "stream", FFFF6, 65535, FFFF6, 65535),
    ),
    (
        "v1 TCP6, the shortest",
        b"PROXY TCP6 :: :: 0 0\r\n",
        (1, "PROXY", "IPv6", "stream", "::", 0, "::", 0),
    ),
    (
        "v1 TCP6, upper case, uncompressed, IPv4 tail",
        b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::FFFF:192.0.2.1 1 2\r\n",
        (1, "PROXY", "IPv6", "stream", "2001:db8::1", 1, "::ffff:192.0.2.1", 2),
    ),
    ("v1 UNKNOWN, short form (15 bytes)", b"PROXY UNKNOWN\r\n", ANY),
    (
        "v1 UNKNOWN, the worst case (107 bytes)",
        f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 65535\r\n".encode(),
        ANY,
    ),
    ("v1 UNKNOWN, anything before CRLF", b"PROXY UNKNOWN what ever  :-)\r\n", ANY),
    (
        "v2 TCP4, as HAProxy sends it",
        bytes.fromhex("0d0a0d0a000d0a515549540a 2111 000c ac130001 ac130003 a652 0050"),
        (2, "PROXY", "IPv4", "stream", "172.19.0.1", 42578, "172.19.0.3", 80),
    ),
    (
        "v2 UDP4",
        v2(0x21, 0x12, IPV4_BLOCK),
        (2, "PROXY", "IPv4", "dgram", "172.19.0.1", 42578, "172.19.0.3", 80),
    ),
    (
        "v2 TCP6",
        v2(0x21, 0x21, IPV6_BLOCK),
        (2, "PROXY", "IPv6", "stream", "2001:db8::1", 56324, "::1", 443),
    ),
    (
        "v2 UDP6",
        v2(0x21, 0x22, IPV6_BLOCK),
        (2, "PROXY", "IPv6", "dgram", "2001:db8::1", 56324, "::1", 443),
    ),
    (
        "v2 unix stream, a path and an abstract name",
        v2(0x21, 0x31, sun_path(b"/run/app.sock") + sun_path(b"\0abstract")),
        (2, "PROXY", "unix", "stream", "/run/app.sock", None, "\0abstract", None),
    ),
    (
        "v2 unix datagram, unnamed source, 108-byte path",
        v2(0x21, 0x32, sun_path(b"") + b"/" + b"p" * 107),
        (2, "PROXY", "unix", "dgram", "", None, "/" + "p" * 107, None),
    ),
    (
        "v2 TCP4 with TLVs, skipped",
        v2(0x21, 0x11, IPV4_BLOCK + TLVS),
        (2, "PROXY", "IPv4", "stream", "172.19.0.1", 42578, "172.19.0.3", 80),
    ),
    (
        "v2 TCP6 with TLVs past 536 bytes",
        v2(0x21, 0x21, IPV6_BLOCK + tlv(0x04, bytes(1000))),
        (2, "PROXY", "IPv6", "stream", "2001:db8::1", 56324, "::1", 443),
    ),
    ("v2 LOCAL, no addresses", v2(0x20, 0x00, b""), (2, "LOCAL", *ANY[2:])),
    ("v2 LOCAL, addresses skipped", v2(0x20, 0x11, IPV4_BLOCK), (2, "LOCAL", *ANY[2:])),
    ("v2 LOCAL, family ignored", v2(0x20, 0xFF, b"\1\2\3"), (2, "LOCAL", *ANY[2:])),
    ("v2 PROXY AF_UNSPEC", v2(0x21, 0x00, b""), (2, *ANY[1:])),
    ("v2 PROXY AF_UNSPEC, bytes skipped", v2(0x21, 0x01, b"12345"), (2, *ANY[1:])),
    ("v2 PROXY IPv4, UNSPEC transport", v2(0x21, 0x10, IPV4_BLOCK), (2, *ANY[1:])),
]
EXAMPLE_IDS = [case[0] for case in EXAMPLES]
EXAMPLE_ARGS = [case[1:] for case in EXAMPLES]


def expected(fields: tuple, length: int) -> Header:
    return Header(*fields, length=length)


# ---------------------------------------------------------------- reading helpers


def read_header(stream: io.BytesIO, size: Callable[[int], int] = lambda n: n) -> Parser:
    """Read a header from ``stream`` as a socket caller would, ``size(needed)`` a read."""
    parser = Parser()
    reads = 0
    while parser.needed():
        n = size(parser.needed())
        assert 1 <= n <= parser.needed()
        parser.feed(stream.read(n))
        reads += 1
        assert reads <= 65551, "the parser asked for bytes forever"
    return parser


def one_byte(_needed: int) -> int:
    return 1


# ---------------------------------------------------------------- the examples


@pytest.mark.parametrize("header, fields", EXAMPLE_ARGS, ids=EXAMPLE_IDS)
def test_example_whole(header, fields):
    """Parsed from one buffer that holds the client's data too."""
    assert parse(header + CLIENT_DATA) == expected(fields, len(header))
    assert parse(header) == expected(fields, len(header))
    assert parse(bytearray(header + CLIENT_DATA)) == expected(fields, len(header))
    assert parse(memoryview(header + CLIENT_DATA)) == expected(fields, len(header))


@pytest.mark.parametrize("size", [None, one_byte], ids=["needed", "one byte"])
@pytest.mark.parametrize("header, fields", EXAMPLE_ARGS, ids=EXAMPLE_IDS)
def test_example_read_from_a_stream(header, fields, size):
    """Read ``needed()`` (or one) bytes at a time: the client's data stays unread."""
    stream = io.BytesIO(header + CLIENT_DATA)
    parser = read_header(stream, size or (lambda n: n))
    assert parser.header == expected(fields, len(header))
    assert stream.tell() == len(header)
    assert parser.trailing == b""
    assert stream.read() == CLIENT_DATA


@pytest.mark.parametrize("header, fields", EXAMPLE_ARGS, ids=EXAMPLE_IDS)
def test_example_fed_at_once(header, fields):
    """A caller that read more than ``needed()`` gets the surplus back in ``trailing``."""
    parser = Parser()
    assert parser.feed(header + CLIENT_DATA) == expected(fields, len(header))
    assert parser.needed() == 0
    assert parser.trailing == CLIENT_DATA


@pytest.mark.parametrize("header, fields", EXAMPLE_ARGS, ids=EXAMPLE_IDS)
def test_example_peeked(header, fields):
    """Way 2: peek, then read exactly ``length`` bytes."""
    peeked = (header + CLIENT_DATA)[:MAX_PEEK]
    result = parse(peeked)
    if len(header) > MAX_PEEK:
        assert result == len(header) - MAX_PEEK  # fall back to reading
    else:
        assert isinstance(result, Header)
        assert (header + CLIENT_DATA)[result.length :] == CLIENT_DATA


@pytest.mark.parametrize("header, fields", EXAMPLE_ARGS, ids=EXAMPLE_IDS)
def test_example_every_cut(header, fields):
    """Each proper prefix asks for more, and never for more than the header has left."""
    for cut in range(len(header)):
        needed = parse(header[:cut])
        assert isinstance(needed, int), cut
        assert 1 <= needed <= len(header) - cut, cut


@pytest.mark.parametrize("header, fields", EXAMPLE_ARGS, ids=EXAMPLE_IDS)
def test_example_cut_by_eof(header, fields):
    """EOF inside a header is an error naming how far it got."""
    for cut in (0, 1, len(header) // 2, len(header) - 1):
        parser = Parser()
        if cut:
            assert parser.feed(header[:cut]) is None
        with pytest.raises(ProxyProtocolError, match=f"closed after {cut} bytes"):
            parser.feed(b"")


def test_reads_taken():
    """A v2 header takes three reads; a v1 line a few, never one per byte."""
    counts = {}
    for name, header, _ in EXAMPLES:
        parser, stream, reads = Parser(), io.BytesIO(header + CLIENT_DATA), 0
        while parser.needed():
            parser.feed(stream.read(parser.needed()))
            reads += 1
        counts[name] = reads
    assert counts["v2 TCP4, as HAProxy sends it"] == 3  # 15, 1, 12
    assert counts["v2 unix stream, a path and an abstract name"] == 3
    assert counts["v1 UNKNOWN, short form (15 bytes)"] == 1
    assert counts["v1 TCP4, the spec's example"] <= 8
    assert counts["v1 TCP6, the longest (104 bytes)"] <= 20


def test_parser_after_the_header():
    parser = Parser()
    parser.feed(b"PROXY UNKNOWN\r\n")
    with pytest.raises(RuntimeError, match="client's data"):
        parser.feed(b"x")


def test_empty_input_asks_for_the_shortest_header():
    assert parse(b"") == len(b"PROXY UNKNOWN\r\n") == Parser().needed()


def test_no_gevent_import():
    """The parser is sans-IO: importing it loads no gevent."""
    code = "import sys, geventfork._proxy; print(sorted(m for m in sys.modules if 'gevent.' in m))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=True
    )
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- malformed input

LONG_JUNK = b"x" * (V1_MAX_LENGTH - len(b"PROXY UNKNOWN \r\n") + 1)  # one byte too many

#: (id, bytes, what the one-line message says)
MALFORMED = [
    ("HTTP", b"GET / HTTP/1.1\r\n\r\n", "not a PROXY protocol header"),
    ("TLS", b"\x16\x03\x01\x02\x00\x01\x00", "not a PROXY protocol header"),
    ("lower case", b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY protocol header"),
    ("PROXY alone", b"PROXY\r\n", "not a PROXY protocol header"),
    ("two spaces after PROXY", b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    ("bad protocol", b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol 'TCP5'"),
    ("UDP4 in v1", b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    ("UNKNOWN-ish", b"PROXY UNKNOWNX\r\n", "unknown protocol"),
    ("TCP4 then CRLF", b"PROXY TCP4\r\n", "2 fields, not 6"),
    ("double space", b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "exactly one space"),
    ("space before CRLF", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "one space|more than 6"),
    ("too many fields", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "more than 6 fields"),
    ("too few fields", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "5 fields, not 6"),
    ("tab", b"PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    ("bare LF", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CR or LF inside"),
    ("bare CR", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rx", "CR or LF inside"),
    ("CR CR LF", b"PROXY UNKNOWN\r\r\n", "CR or LF inside"),
    ("LF CR", b"PROXY UNKNOWN\n\r", "CR or LF inside"),
    ("no CRLF in 107 bytes", b"PROXY UNKNOWN " + LONG_JUNK + b"x\r\n", "no CRLF in the first 107"),
    ("a 108-byte line", b"PROXY UNKNOWN " + LONG_JUNK + b"\r\n", "no CRLF in the first 107"),
    ("IPv4 leading zero", b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "source address '01.2.3.4'"),
    ("IPv4 octet 256", b"PROXY TCP4 1.2.3.4 256.6.7.8 1 2\r\n", "destination address"),
    ("IPv4 three parts", b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "not IPv4"),
    ("IPv4 in hex", b"PROXY TCP4 0x1.2.3.4 5.6.7.8 1 2\r\n", "not IPv4"),
    ("IPv6 under TCP4", b"PROXY TCP4 ::1 ::1 1 2\r\n", "not IPv4"),
    ("IPv4 under TCP6", b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "not IPv6"),
    ("IPv6 two ::", b"PROXY TCP6 1::2::3 ::1 1 2\r\n", "source address '1::2::3'"),
    ("IPv6 zone", b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "not IPv6"),
    ("IPv6 five digits", b"PROXY TCP6 12345::1 ::1 1 2\r\n", "not IPv6"),
    ("IPv6 nine groups", b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", "not IPv6"),
    ("IPv6 tail leading zero", b"PROXY TCP6 ::ffff:1.02.3.4 ::1 1 2\r\n", "not IPv6"),
    ("port 65536", b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "source port '65536'"),
    ("port leading zero", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 080\r\n", "destination port '080'"),
    ("port sign", b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "source port"),
    ("port negative", b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "source port"),
    ("port non-ASCII digit", "PROXY TCP4 1.2.3.4 5.6.7.8 \u0661 2\r\n".encode(), "source port"),
    ("v2 bad signature", SIG[:11] + b"\x0b" + b"\x21\x11\x00\x0c" + IPV4_BLOCK, "bad v2 signature"),
    ("v2 signature, no version", SIG + b"\x00", "unsupported version 0"),
    ("v2 version 1", v2(0x11, 0x11, IPV4_BLOCK), "unsupported version 1"),
    ("v2 version 3", v2(0x31, 0x11, IPV4_BLOCK), "unsupported version 3"),
    ("v2 command 2", v2(0x22, 0x11, IPV4_BLOCK), "unknown command 2"),
    ("v2 command 15", v2(0x2F, 0x11, IPV4_BLOCK), "unknown command 15"),
    ("v2 family 4", v2(0x21, 0x41, IPV4_BLOCK), "unknown address family 4"),
    ("v2 transport 3", v2(0x21, 0x13, IPV4_BLOCK), "unknown transport 3"),
    ("v2 IPv4 len 11", v2(0x21, 0x11, IPV4_BLOCK[:11]), "len 11 is too small for IPv4"),
    ("v2 IPv6 len 35", v2(0x21, 0x21, IPV6_BLOCK[:35]), "len 35 is too small for IPv6"),
    ("v2 IPv6 len 12", v2(0x21, 0x21, IPV4_BLOCK), "len 12 is too small for IPv6"),
    ("v2 unix len 215", v2(0x21, 0x31, bytes(215)), "len 215 is too small for unix"),
    ("v2 IPv4 len 0", v2(0x21, 0x11, b""), "len 0 is too small for IPv4"),
]


@pytest.mark.parametrize("data, message", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed(data, message):
    """Each raises one ProxyProtocolError, whole or byte at a time, with a one-line message."""
    with pytest.raises(ProxyProtocolError, match=message) as whole:
        parse(data + CLIENT_DATA)
    err = whole.value
    assert isinstance(err, GeventforkError)
    assert err.code == "ERR_PROXY_PROTOCOL"
    assert "\n" not in str(err) and len(str(err)) < 160
    assert (data + CLIENT_DATA).startswith(err.data) and err.data
    parser = Parser()
    with pytest.raises(ProxyProtocolError, match=message):
        for i in range(len(data) + len(CLIENT_DATA)):
            parser.feed((data + CLIENT_DATA)[i : i + 1])


#: (bytes, the 1-based count of bytes after which the parser must have given up)
EARLY = [
    (b"GET / HTTP/1.1\r\n", 1),
    (b"PRXY", 3),
    (b"PROXY TCP5", 10),
    (b"PROXY UNKNOWN\rX", 15),
    (b"PROXY TCP4 1.2.3.04 ", 20),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3", 31),
    (b"PROXY TCP4 1.2.3.4\r", 19),
    (SIG[:5] + b"\x01", 6),
    (SIG + b"\x12", 13),
    (SIG + b"\x21\x51", 14),
    (SIG + b"\x21\x11\x00\x0b", 16),
]


@pytest.mark.parametrize("data, at", EARLY, ids=[repr(d) for d, _ in EARLY])
def test_rejected_as_soon_as_possible(data, at):
    """Whatever cannot begin a valid header fails at once, without waiting for more."""
    assert isinstance(parse(data[: at - 1]), int)
    with pytest.raises(ProxyProtocolError):
        parse(data[:at])


# ---------------------------------------------------------------- encoders


def test_encode_examples():
    assert encode_v1() == b"PROXY UNKNOWN\r\n"
    assert encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443)) == EXAMPLES[0][1]
    assert encode_v2(("172.19.0.1", 42578), ("172.19.0.3", 80)) == EXAMPLES[10][1]
    assert encode_v2(("172.19.0.1", 42578), ("172.19.0.3", 80), transport="dgram") == v2(
        0x21, 0x12, IPV4_BLOCK
    )
    assert encode_v2(command="LOCAL") == v2(0x20, 0x00, b"")
    assert encode_v2() == v2(0x21, 0x00, b"")
    assert encode_v2("/run/app.sock", "\0abstract") == EXAMPLES[14][1]
    assert (
        encode_v2(("2001:db8::1", 56324), ("::1", 443), tlvs=[(4, bytes(1000))])
        == (EXAMPLES[17][1])
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda: encode_v1(("1.2.3.4", 1), None),
        lambda: encode_v1(("1.2.3.4", 1), ("::1", 2)),
        lambda: encode_v1(("example.com", 1), ("1.2.3.4", 2)),
        lambda: encode_v1(("1.2.3.4", 65536), ("1.2.3.4", 2)),
        lambda: encode_v1(("1.2.3.4", -1), ("1.2.3.4", 2)),
        lambda: encode_v2(("1.2.3.4", 1), ("::1", 2)),
        lambda: encode_v2(("1.2.3.4", 1), "/path"),
        lambda: encode_v2("/" + "p" * 108, "/path"),
        lambda: encode_v2(("1.2.3.4", 1), ("1.2.3.4", 2), command="LOCAL"),
        lambda: encode_v2(tlvs=[(256, b"")]),
        lambda: encode_v2(tlvs=[(1, bytes(65536))]),
        lambda: encode_v2(tlvs=[(1, bytes(40000)), (1, bytes(40000))]),
    ],
)
def test_encode_rejects(call):
    with pytest.raises(ValueError):
        call()


# ---------------------------------------------------------------- properties

PROPERTY = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Starts that lead the parser deep into each format before the random bytes.
PREFIXES = st.sampled_from(
    [
        b"",
        b"P",
        b"PROXY ",
        b"PROXY TCP4 ",
        b"PROXY TCP4 1.2.3.4 ",
        b"PROXY TCP6 ",
        b"PROXY TCP6 ::1 ::1 1 ",
        b"PROXY UNKNOWN",
        b"PROXY UNKNOWN\r",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 ",
        SIG,
        SIG + b"\x21",
        SIG + b"\x21\x11",
        SIG + b"\x21\x11\x00\x0c",
        SIG + b"\x20",
        SIG + b"\x20\x00\x00",
        SIG + b"\x21\x31\x00\xd8",
    ]
)
V1_ALPHABET = "0123456789abcdefABCDEF.: \r\nPROXYTCP46UNKW"
BODIES = st.one_of(
    st.binary(max_size=300),
    st.text(alphabet=V1_ALPHABET, max_size=120).map(str.encode),
)


def outcome(call: Callable[[], object]) -> object:
    """The call's result, or its error's type; any other exception propagates."""
    try:
        return call()
    except ProxyProtocolError:
        return ProxyProtocolError


def reader(data: st.DataObject) -> Callable[[int], int]:
    """A socket that returns from 1 to ``n`` bytes, as Hypothesis picks."""
    return lambda n: data.draw(st.integers(1, n))


HEADERS = st.sampled_from([header for _, header, _ in EXAMPLES])


def mutate(header: bytes, position: int, byte: int) -> bytes:
    """``header`` with the byte at ``position`` (modulo its length) replaced."""
    changed = bytearray(header)
    changed[position % len(header)] = byte
    return bytes(changed)


#: Random bytes after a start from PREFIXES; an example header, one byte
#: changed or not, and random bytes after it.
INPUTS = st.one_of(
    st.builds(operator.add, PREFIXES, BODIES),
    st.builds(operator.add, HEADERS, BODIES),
    st.builds(
        operator.add, st.builds(mutate, HEADERS, st.integers(0), st.integers(0, 255)), BODIES
    ),
)


@PROPERTY
@given(data=INPUTS)
def test_random_bytes_parse(data):
    """Random input: a Header within the input, a count > 0, or ProxyProtocolError."""
    result = outcome(lambda: parse(data))
    if isinstance(result, Header):
        assert 0 < result.length <= len(data)
        assert data[: result.length].endswith(b"\r\n") or result.version == 2
        assert result == parse(data[: result.length])
    elif result is not ProxyProtocolError:
        assert isinstance(result, int) and result > 0


@PROPERTY
@given(data=INPUTS, pieces=st.data())
def test_random_bytes_read(data, pieces):
    """Read in random pieces: the same outcome as whole, and never a byte past the header."""
    stream = io.BytesIO(data)
    parsed = outcome(lambda: read_header(stream, reader(pieces)).header)
    whole = outcome(lambda: parse(data))
    if isinstance(whole, int):
        assert parsed is ProxyProtocolError  # EOF inside the header
    else:
        assert parsed == whole
    if isinstance(parsed, Header):
        assert stream.tell() == parsed.length


ports = st.integers(0, 0xFFFF)
ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)
inet = st.one_of(
    st.tuples(st.tuples(ipv4, ports), st.tuples(ipv4, ports)),
    st.tuples(st.tuples(ipv6, ports), st.tuples(ipv6, ports)),
)
path_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40
)
unix_path = st.one_of(path_text, path_text.filter(bool).map(lambda p: "\0" + p)).filter(
    lambda p: len(os.fsencode(p)) <= 108
)
tlv_lists = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=4)


def check_round_trip(encoded: bytes, want: Header, trailing: bytes, data: st.DataObject) -> None:
    """Read ``encoded + trailing`` in random pieces: ``want``, and ``trailing`` unread.

    Also: parsed whole, the same header; cut anywhere, a count that does not
    pass the header's end.
    """
    stream = io.BytesIO(encoded + trailing)
    parser = read_header(stream, reader(data))
    assert as_ips(parser.header) == want
    assert stream.read() == trailing
    assert parse(encoded + trailing) == parser.header
    for cut in range(len(encoded)):
        needed = parse(encoded[:cut])
        assert isinstance(needed, int) and 1 <= needed <= len(encoded) - cut


def ip_header(version: int, command: str, transport: str, addresses, length: int) -> Header:
    """The Header expected for (address, port) pairs; addresses compared as IPs."""
    (src, sport), (dst, dport) = addresses
    family = "IPv4" if src.version == 4 else "IPv6"
    return Header(version, command, family, transport, src, sport, dst, dport, length)


def as_ips(header: Optional[Header]) -> Optional[Header]:
    """``header`` with its addresses made ``ipaddress`` objects, to compare by value."""
    if header is None or header.family not in ("IPv4", "IPv6"):
        return header
    src = ipaddress.ip_address(header.source_address)
    dst = ipaddress.ip_address(header.destination_address)
    fields = {**header.__dict__, "source_address": src, "destination_address": dst}
    return Header(**fields)


@PROPERTY
@given(addresses=st.one_of(st.none(), inet), trailing=st.binary(max_size=60), data=st.data())
def test_round_trip_v1(addresses, trailing, data):
    if addresses is None:
        encoded = encode_v1()
        want = Header(1, "PROXY", "unspec", "unspec", None, None, None, None, len(encoded))
    else:
        (src, sport), (dst, dport) = addresses
        encoded = encode_v1((str(src), sport), (str(dst), dport))
        want = ip_header(1, "PROXY", "stream", addresses, len(encoded))
    assert len(encoded) <= V1_MAX_LENGTH
    check_round_trip(encoded, want, trailing, data)


@PROPERTY
@given(
    addresses=st.one_of(st.none(), inet, st.tuples(unix_path, unix_path)),
    command=st.sampled_from(["PROXY", "LOCAL"]),
    transport=st.sampled_from(["stream", "dgram"]),
    tlvs=tlv_lists,
    trailing=st.binary(max_size=60),
    data=st.data(),
)
def test_round_trip_v2(addresses, command, transport, tlvs, trailing, data):
    if command == "LOCAL" or addresses is None:
        encoded = encode_v2(command=command, transport=transport, tlvs=tlvs)
        want = Header(2, command, "unspec", "unspec", None, None, None, None, len(encoded))
    elif isinstance(addresses[0], str):
        src, dst = addresses
        encoded = encode_v2(src, dst, transport=transport, tlvs=tlvs)
        want = Header(2, "PROXY", "unix", transport, src, None, dst, None, len(encoded))
    else:
        (src, sport), (dst, dport) = addresses
        encoded = encode_v2((str(src), sport), (str(dst), dport), transport=transport, tlvs=tlvs)
        want = ip_header(2, "PROXY", transport, addresses, len(encoded))
    check_round_trip(encoded, want, trailing, data)


def test_v1_addresses_read_as_getpeername_gives_them():
    """IPv6 text is inet_ntop's, whatever form the sender chose."""
    header = parse(b"PROXY TCP6 0:0:0:0:0:FFFF:C000:0201 2001:0DB8:0000::0001 1 2\r\n")
    assert isinstance(header, Header)
    assert header.source_address == "::ffff:192.0.2.1"
    assert header.destination_address == "2001:db8::1"
