"""Tests for the sans-IO wire core: bytes and fds in, frames out, no sockets."""

from __future__ import annotations

import errno
import os
import posix
from typing import NamedTuple, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geventfork._wire import (
    ACK,
    CLOSED,
    DONE,
    HEADER,
    MAX_FDS,
    MAX_FRAME_SIZE,
    MESSAGE,
    NACK,
    NEED_DATA,
    Decoder,
    Frame,
    encode,
    encode_message,
    encode_ack,
)
from geventfork.errors import ProtocolError
from helpers import KiB, MiB

#: Chunk size for the parts of a big stream that are not fed byte at a time.
BIG_STEP = 65521  # prime, so cuts land at every offset within a header
#: The kernel's close. Under gevent >= 25.8.1, patched ``os.close`` defers
#: closing a pipe or device to the next loop turn, so ``fstat`` right after it
#: would still succeed; these tests want the fd gone when close_fd returns.
close = posix.close

# ---------------------------------------------------------------- helpers


@pytest.fixture
def fds():
    """Return ``make(n)``: ``n`` fresh fds on /dev/null, closed after the test."""
    opened = []

    def make(n: int) -> tuple:
        new = tuple(os.open(os.devnull, os.O_RDONLY) for _ in range(n))
        opened.extend(new)
        return new

    yield make
    null = os.stat(os.devnull)
    for fd in opened:
        try:
            st_ = os.fstat(fd)
        except OSError:
            continue  # the decoder closed it, as it should have
        if (st_.st_dev, st_.st_ino) == (null.st_dev, null.st_ino):
            close(fd)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as exc:
        assert exc.errno == errno.EBADF
        return False
    return True


def close_recorder(real: bool = False):
    """Return ``(closed, close_fd)``: close_fd appends to closed (and closes if real)."""
    closed: list = []

    def close_fd(fd: int) -> None:
        closed.append(fd)
        if real:
            close(fd)

    return closed, close_fd


def serialize(frames) -> tuple:
    """Encode frames into one stream; return ``(data, [(start, end, fds)])``."""
    data, owners = b"", []
    for frame in frames:
        chunk, frame_fds = encode(frame)
        if frame_fds:
            owners.append((len(data), len(data) + len(chunk), tuple(frame_fds)))
        data += chunk
    return data, owners


def split(data: bytes, owners: list, cuts) -> list:
    """Cut data into reads, giving each frame's fds to the read with its first byte.

    As on Linux, a read ends where the frame that brought fds ends, so fd-less
    frames may precede an fd-carrying frame in its read but no read holds two.
    """
    bounds = sorted({len(data), *cuts, *(end for _, end, _ in owners)} - {0})
    reads, lo = [], 0
    for hi in bounds:
        mine = [fds for start, _, fds in owners if lo <= start < hi]
        reads.append((data[lo:hi], mine[0] if mine else ()))
        lo = hi
    return reads


def byte_cuts(n: int) -> list:
    """Every offset; for a big stream, every offset near each end and coarse between."""
    if n <= MiB:
        return list(range(1, n))
    return [*range(1, 4 * HEADER.size), *range(4 * HEADER.size, n, BIG_STEP), n - 1]


def drain(decoder: Decoder) -> list:
    """Every frame available now, stopping at NEED_DATA or CLOSED."""
    events = []
    while True:
        event = decoder.next_event()
        if event is NEED_DATA or event is CLOSED:
            return events + [event]
        events.append(event)


def feed(decoder: Decoder, reads) -> list:
    """Feed reads one at a time, draining after each; return the frames seen."""
    frames = []
    for data, read_fds in reads:
        decoder.receive_data(data, read_fds)
        events = drain(decoder)
        assert events[-1] is NEED_DATA
        frames += events[:-1]
    return frames


MODES = ["whole", "bytes", "trailing"]


def check_stream(frames, mode: str) -> None:
    """Feed the encoding of frames whole, byte at a time, or with trailing bytes.

    The decoder must return exactly frames, close no fd, then report a clean
    EOF (or, with trailing bytes, buffer them and call EOF inside a frame).
    """
    data, owners = serialize(frames)
    cuts = byte_cuts(len(data)) if mode == "bytes" else []
    reads = split(data, owners, cuts)
    trailing = encode(Frame(MESSAGE, b"tail"))[0][: HEADER.size - 1]
    if mode == "trailing":
        last, last_fds = reads.pop() if reads else (b"", ())
        reads.append((last + trailing, last_fds))
    closed, close_fd = close_recorder()
    decoder = Decoder(close_fd=close_fd)
    assert feed(decoder, reads) == list(frames)
    decoder.receive_eof()
    if mode == "trailing":
        assert decoder.buffered == len(trailing)
        with pytest.raises(ProtocolError) as info:
            decoder.next_event()
        assert info.value.data == trailing
    else:
        assert decoder.buffered == 0
        assert decoder.next_event() is CLOSED
        assert decoder.next_event() is CLOSED
    assert closed == []


def header(size=0, kind=MESSAGE, codec=0, handle=0, flags=0, nfds=0, ident=0) -> bytes:
    return HEADER.pack(size, kind, codec, handle, flags, nfds, ident)


# ---------------------------------------------------------------- round trips

# Each case takes the ``fds`` factory and returns the frames to send.
CASES = {
    "empty message": lambda fds: [Frame(MESSAGE)],
    "one byte": lambda fds: [Frame(MESSAGE, b"x")],
    "64 KiB": lambda fds: [Frame(MESSAGE, os.urandom(64 * KiB), codec=1)],
    "fields kept": lambda fds: [
        Frame(MESSAGE, b"abc", codec=2, handle=3, flags=0xFF, ident=0xFFFFFFFF),
        Frame(MESSAGE, b"", codec=255, handle=255, flags=1, ident=1),
    ],
    "ack and nack": lambda fds: [Frame(ACK, ident=7), Frame(NACK, ident=0xFFFFFFFF)],
    "many frames": lambda fds: [
        Frame((MESSAGE, ACK, NACK)[i % 3], b"p" * i if i % 3 == 0 else b"", ident=i)
        for i in range(60)
    ],
    "fds": lambda fds: [Frame(MESSAGE, b"h", fds(2), handle=1, ident=1)],
    "fds, empty payload": lambda fds: [Frame(MESSAGE, b"", fds(1), handle=1, ident=1)],
    "fds, most allowed": lambda fds: [Frame(MESSAGE, b"m", fds(MAX_FDS), ident=1)],
    "fds after fd-less frames": lambda fds: [
        Frame(MESSAGE, b"a"),
        Frame(ACK, ident=3),
        Frame(MESSAGE, b"b", fds(1), ident=4),
        Frame(MESSAGE, b"c"),
    ],
    "several fd frames": lambda fds: [
        Frame(MESSAGE, b"one", fds(1), ident=1),
        Frame(MESSAGE, b"plain"),
        Frame(MESSAGE, b"two", fds(2), ident=2),
        Frame(NACK, ident=9),
        Frame(MESSAGE, b"", fds(3), ident=3),
        Frame(MESSAGE, b"four", fds(1), ident=4),
    ],
    # Over 256 KiB of small frames ahead of the fd frame makes the decoder
    # compact its buffer mid-read; the fds must still find their frame.
    "fds after compaction": lambda fds: [
        *[Frame(MESSAGE, bytes([i]) * (4 * KiB)) for i in range(70)],
        Frame(MESSAGE, b"late", fds(1), ident=70),
        *[Frame(MESSAGE, b"q" * (4 * KiB)) for i in range(70)],
        Frame(MESSAGE, b"later", fds(1), ident=71),
    ],
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_round_trip(case, mode, fds):
    check_stream(CASES[case](fds), mode)


@pytest.mark.parametrize("mode", MODES)
def test_round_trip_16_mib(mode):
    check_stream([Frame(MESSAGE, os.urandom(16 * MiB), ident=5)], mode)


def test_fd_numbers_come_back(fds):
    sent = fds(3)
    data, frame_fds = encode(Frame(MESSAGE, b"x", sent, ident=1))
    assert frame_fds == list(sent)
    decoder = Decoder(close_fd=close)
    decoder.receive_data(data, frame_fds)
    frame = decoder.next_event()
    assert frame.fds == sent and not frame.fds_lost
    assert all(is_open(fd) for fd in sent)
    decoder.close()
    assert all(is_open(fd) for fd in sent), "close() closed fds a frame had claimed"


def test_every_split_point(fds):
    frames = [Frame(MESSAGE, b"ab", fds(1), ident=1), Frame(ACK, ident=2)]
    data, owners = serialize(frames)
    for cut in range(1, len(data)):
        assert feed(Decoder(close_fd=close), split(data, owners, [cut])) == frames, cut


def test_header_split_across_reads():
    data = encode(Frame(MESSAGE, b"payload", ident=3))[0]
    decoder = Decoder()
    decoder.receive_data(data[:5])
    assert decoder.next_event() is NEED_DATA
    decoder.receive_data(data[5 : HEADER.size])
    assert decoder.next_event() is NEED_DATA
    assert decoder.buffered == HEADER.size
    decoder.receive_data(data[HEADER.size :])
    assert decoder.next_event() == Frame(MESSAGE, b"payload", ident=3)
    assert decoder.next_event() is NEED_DATA


@pytest.mark.parametrize("kind", [ACK, NACK, DONE])
def test_encode_ack(kind):
    data = encode_ack(0xDEADBEEF, kind)
    assert data == encode(Frame(kind, ident=0xDEADBEEF))[0]
    decoder = Decoder()
    decoder.receive_data(data)
    assert decoder.next_event() == Frame(kind, ident=0xDEADBEEF)


def test_encode_ack_defaults_to_ack():
    assert encode_ack(1) == encode_ack(1, ACK)


# ---------------------------------------------------------------- fds


@pytest.mark.parametrize("arrived", [0, 1, 2])
def test_truncated_fds_are_lost_not_fatal(arrived, fds):
    sent = fds(arrived)
    data = header(1, nfds=3, ident=1) + b"x" + encode_ack(1)
    decoder = Decoder(close_fd=close)
    decoder.receive_data(data, sent, truncated=True)
    frame = decoder.next_event()
    assert frame == Frame(MESSAGE, b"x", sent, ident=1, fds_lost=True)
    assert decoder.next_event() == Frame(ACK, ident=1)
    assert all(is_open(fd) for fd in sent)


def fd_error_cases(fds) -> dict:
    """Streams whose fds break the rules: ``{name: (reads, truncated)}``.

    Each must raise by the time its reads are in, without waiting for EOF.
    """
    msg1 = header(1, nfds=1, ident=1) + b"w"
    msg2 = header(1, nfds=2, ident=1) + b"x"
    plain = encode(Frame(MESSAGE, b"y"))[0]
    # Enough bytes that the decoder compacts its buffer while holding the fds.
    big = encode(Frame(MESSAGE, b"b" * (4 * KiB)))[0] * 70
    return {
        "fewer than announced": ([(msg2, fds(1))], False),
        "none arrived": ([(msg2, ())], False),
        "more than announced": ([(msg2, fds(3))], False),
        "more than announced, truncated": ([(msg2, fds(3))], True),
        "fds on an fd-less frame": ([(plain, fds(1)), (plain, ())], False),
        "fds on an fd-less frame, then fds": ([(plain, fds(1)), (msg1, fds(1))], False),
        "fds on fd-less frames, then fds": ([(big, fds(1)), (msg1, fds(1))], False),
        "fds with the frame's second read": ([(msg2[:3], ()), (msg2[3:], fds(2))], False),
        "fds on a read holding no frame start": (
            [(plain[:3], ()), (plain[3:], fds(1)), (plain, ())],
            False,
        ),
        "fds with no bytes": ([(b"", fds(2))], False),
    }


@pytest.mark.parametrize("case", list(fd_error_cases(lambda n: ())))  # names only
def test_bad_fds_raise_and_are_closed(case, fds):
    reads, truncated = fd_error_cases(fds)[case]
    given = [fd for _, read_fds in reads for fd in read_fds]
    decoder = Decoder(close_fd=close)
    with pytest.raises(ProtocolError) as info:
        for data, read_fds in reads:
            decoder.receive_data(data, read_fds, truncated=truncated)
            drain(decoder)
    assert info.value.code == "ERR_IPC_PROTOCOL"
    assert not any(is_open(fd) for fd in given)


def test_unclaimed_fds_at_eof_raise(fds):
    sent = fds(2)
    decoder = Decoder(close_fd=close)
    decoder.receive_data(encode(Frame(MESSAGE, b"z"))[0], sent)
    assert decoder.next_event() == Frame(MESSAGE, b"z")
    assert decoder.next_event() is NEED_DATA
    decoder.receive_eof()
    with pytest.raises(ProtocolError, match="no frame claimed"):
        decoder.next_event()
    assert not any(is_open(fd) for fd in sent)


def test_error_closes_exactly_the_unclaimed_fds():
    closed, close_fd = close_recorder()
    decoder = Decoder(close_fd=close_fd)
    decoder.receive_data(header(1, nfds=1, ident=1) + b"a", [100])
    assert decoder.next_event().fds == (100,)
    decoder.receive_data(header(1, nfds=2, ident=2), [101, 102])
    assert decoder.next_event() is NEED_DATA
    decoder.receive_eof()
    with pytest.raises(ProtocolError, match="EOF inside a frame"):
        decoder.next_event()
    assert closed == [101, 102]


def test_close_closes_held_fds(fds):
    held = fds(2)
    decoder = Decoder(close_fd=close)
    decoder.receive_data(header(10, nfds=2, ident=1) + b"part", held)
    assert decoder.next_event() is NEED_DATA
    assert all(is_open(fd) for fd in held)
    decoder.close()
    assert not any(is_open(fd) for fd in held)


def test_fds_after_error_are_closed(fds):
    decoder = Decoder(close_fd=close)
    decoder.receive_data(header(kind=0))
    with pytest.raises(ProtocolError):
        decoder.next_event()
    late = fds(2)
    decoder.receive_data(header(1, nfds=2, ident=1) + b"x", late)
    assert not any(is_open(fd) for fd in late)


def test_close_fd_errors_are_ignored():
    def close_fd(fd: int) -> None:
        raise OSError(errno.EBADF, "gone")

    decoder = Decoder(close_fd=close_fd)
    decoder.receive_data(header(5, nfds=1, ident=1), [7])
    decoder.close()


# ---------------------------------------------------------------- malformed input

BAD_HEADERS = {
    "over default max": header(MAX_FRAME_SIZE + 1),
    "largest size": header(0xFFFFFFFF),
    "kind 0": header(kind=0),
    "kind 5": header(kind=5),
    "done with payload": header(1, kind=DONE),
    "kind 255": header(1, kind=255),
    "ack with payload": header(1, kind=ACK),
    "nack with payload": header(1, kind=NACK),
    "ack with fds": header(kind=ACK, nfds=1),
    "nfds over max": header(1, nfds=MAX_FDS + 1, ident=1),
    "nfds 65535": header(1, nfds=0xFFFF, ident=1),
    "fds without ident": header(1, nfds=1),
}


@pytest.mark.parametrize("bad", BAD_HEADERS.values(), ids=list(BAD_HEADERS))
def test_bad_header_raises_once_header_arrives(bad):
    decoder = Decoder()
    for byte in bad[:-1]:
        decoder.receive_data(bytes([byte]))
        assert decoder.next_event() is NEED_DATA
    decoder.receive_data(bad[-1:])
    with pytest.raises(ProtocolError) as info:
        decoder.next_event()
    assert info.value.data == bad
    assert info.value.code == "ERR_IPC_PROTOCOL"


@pytest.mark.parametrize("bad", BAD_HEADERS.values(), ids=list(BAD_HEADERS))
def test_error_carries_offending_bytes_and_sticks(bad, fds):
    good = encode(Frame(MESSAGE, b"ok"))[0]
    tail = bad + bytes(range(100))
    closed, close_fd = close_recorder(real=True)
    decoder = Decoder(close_fd=close_fd)
    decoder.receive_data(good + tail, fds(1))
    assert decoder.next_event() == Frame(MESSAGE, b"ok")
    with pytest.raises(ProtocolError) as first:
        decoder.next_event()
    assert first.value.data == tail[:64]
    assert len(closed) == 1
    for _ in range(2):
        with pytest.raises(ProtocolError) as again:
            decoder.next_event()
        assert (str(again.value), again.value.data) == (str(first.value), first.value.data)
        decoder.receive_eof()


def test_custom_max_size():
    decoder = Decoder(max_size=10)
    decoder.receive_data(encode(Frame(MESSAGE, b"0123456789"))[0] + header(11))
    assert decoder.next_event() == Frame(MESSAGE, b"0123456789")
    with pytest.raises(ProtocolError, match="over the 10-byte limit") as info:
        decoder.next_event()
    assert info.value.data == header(11)


# ---------------------------------------------------------------- EOF


@pytest.mark.parametrize("frames", [0, 1, 3])
def test_eof_between_frames_is_clean(frames):
    decoder = Decoder()
    for i in range(frames):
        decoder.receive_data(encode(Frame(MESSAGE, b"x", ident=i))[0])
    decoder.receive_eof()
    assert drain(decoder)[-1] is CLOSED
    assert decoder.next_event() is CLOSED


PARTIAL = encode(Frame(MESSAGE, b"payload!"))[0]


@pytest.mark.parametrize("cut", [1, 7, HEADER.size - 1, HEADER.size, len(PARTIAL) - 1])
def test_eof_inside_frame_raises(cut):
    decoder = Decoder()
    decoder.receive_data(encode_ack(1) + PARTIAL[:cut])
    assert decoder.next_event() == Frame(ACK, ident=1)
    assert decoder.next_event() is NEED_DATA
    decoder.receive_eof()
    with pytest.raises(ProtocolError, match="EOF inside a frame") as info:
        decoder.next_event()
    assert info.value.data == PARTIAL[:cut]


def test_data_after_eof_is_dropped_and_its_fds_closed(fds):
    decoder = Decoder(close_fd=close)
    decoder.receive_eof()
    late = fds(1)
    decoder.receive_data(header(1, nfds=1, ident=1) + b"x", late)
    assert not is_open(late[0])
    assert decoder.next_event() is CLOSED


# ---------------------------------------------------------------- encode


@pytest.mark.parametrize(
    "frame",
    [
        Frame(MESSAGE, fds=tuple(range(1000, 1000 + MAX_FDS + 1)), ident=1),
        Frame(ACK, b"x", ident=1),
        Frame(NACK, b"x", ident=1),
        Frame(ACK, fds=(1000,), ident=1),
        Frame(0),
        Frame(5, b"x"),
        Frame(MESSAGE, fds=(1000,)),
        Frame(MESSAGE, codec=256),
        Frame(MESSAGE, ident=-1),
    ],
    ids=[
        "too many fds",
        "ack payload",
        "nack payload",
        "ack fds",
        "kind 0",
        "kind 5",
        "fds without ident",
        "codec out of range",
        "negative ident",
    ],
)
def test_encode_rejects(frame):
    with pytest.raises(ValueError):
        encode(frame)


# ---------------------------------------------------------------- properties

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFFFFFF)
messages = st.builds(
    Frame,
    kind=st.just(MESSAGE),
    payload=st.binary(max_size=300),
    fds=st.integers(0, 4),  # a count: number_fds() turns it into fd numbers
    codec=u8,
    handle=u8,
    flags=u8,
    ident=u32,
    fds_lost=st.just(False),
)
answers = st.builds(
    Frame,
    kind=st.sampled_from([ACK, NACK, DONE]),
    payload=st.just(b""),
    fds=st.just(()),
    codec=st.just(0),
    handle=st.just(0),
    flags=st.just(0),
    ident=u32,
    fds_lost=st.just(False),
)


def number_fds(frames) -> list:
    """Give each frame's fd count distinct fake fd numbers (never opened)."""
    out, next_fd = [], 10_000
    for frame in frames:
        count = frame.fds if isinstance(frame.fds, int) else 0
        ident = frame.ident or (1 if count else 0)  # a frame with fds needs an ident
        out.append(frame._replace(fds=tuple(range(next_fd, next_fd + count)), ident=ident))
        next_fd += count
    return out


@PROPERTY
@given(frames=st.lists(messages | answers, max_size=20), data=st.data())
def test_property_round_trip_any_chunking(frames, data):
    frames = number_fds(frames)
    stream, owners = serialize(frames)
    cuts = data.draw(st.sets(st.integers(0, len(stream))))
    closed, close_fd = close_recorder()
    decoder = Decoder(close_fd=close_fd)
    assert feed(decoder, split(stream, owners, cuts)) == frames
    decoder.receive_eof()
    assert decoder.next_event() is CLOSED
    assert closed == []


# Random bytes, and plausible headers (sizes, kinds and fd counts near the
# valid ones) followed by random bytes, so that more input gets past the header.
chunks = st.binary(min_size=1, max_size=40) | st.builds(
    lambda head, tail: head + tail,
    st.builds(
        header,
        size=st.integers(0, 20),
        kind=st.integers(0, 5),
        nfds=st.integers(0, 4),
        ident=st.integers(0, 3),
    ),
    st.binary(max_size=20),
)
reads_st = st.lists(st.tuples(chunks, st.integers(0, 3), st.booleans()), max_size=12)


@PROPERTY
@given(prefix=st.lists(messages | answers, max_size=3), reads=reads_st)
def test_property_random_bytes_yield_frames_or_protocol_error(prefix, reads):
    """Any input gives Frames or ProtocolError; every fd is claimed or closed once."""
    feeds = [(*encode(frame), False) for frame in number_fds(prefix)]
    for i, (chunk, count, truncated) in enumerate(reads):
        feeds.append((chunk, list(range(20_000 + 10 * i, 20_000 + 10 * i + count)), truncated))
    given_fds = [fd for _, read_fds, _ in feeds for fd in read_fds]
    closed, close_fd = close_recorder()
    decoder = Decoder(max_size=1000, close_fd=close_fd)
    frames, last = [], None
    for chunk, read_fds, truncated in [*feeds, (None, (), False)]:
        try:
            if chunk is None:
                decoder.receive_eof()
            else:  # fds in the middle of a frame raise here, as they arrive
                decoder.receive_data(chunk, read_fds, truncated)
            event = decoder.next_event()
            while isinstance(event, Frame):
                frames.append(event)
                event = decoder.next_event()
        except ProtocolError as exc:
            assert exc.code == "ERR_IPC_PROTOCOL" and len(exc.data) <= 64
            assert last is None or str(exc) == str(last), "the first error sticks"
            last = exc
        else:
            assert last is None
    assert last is not None or event is CLOSED
    decoder.close()
    assert all(isinstance(frame, Frame) for frame in frames)
    claimed = [fd for frame in frames for fd in frame.fds]
    assert sorted(claimed + closed) == sorted(given_fds)


def _decode_all(feeds: list, take) -> tuple:
    """Feed ``feeds`` then EOF to a fresh decoder, taking frames with ``take(decoder)``
    (a list, and what came after them); return (frames, first error, fds closed)."""
    closed, close_fd = close_recorder()
    decoder = Decoder(max_size=1000, close_fd=close_fd)
    frames: list = []
    error = None
    for chunk, read_fds, truncated in [*feeds, (None, (), False)]:
        try:
            if chunk is None:
                decoder.receive_eof()
            else:
                decoder.receive_data(chunk, read_fds, truncated)
            while True:
                taken, after = take(decoder)
                frames += taken
                if after is not None:
                    break
        except ProtocolError as exc:
            error = error or str(exc)
    decoder.close()
    return frames, error, sorted(closed)


@PROPERTY
@given(
    prefix=st.lists(messages | answers, max_size=6),
    reads=reads_st,
    limit=st.integers(1, 5),
)
def test_property_next_frames_is_next_event_in_bulk(prefix, reads, limit):
    """``next_frames(limit)`` gives the frames, the error and the closed fds of
    ``next_event`` called again and again, whatever the input."""
    feeds = [(*encode(frame), False) for frame in number_fds(prefix)]
    for i, (chunk, count, truncated) in enumerate(reads):
        feeds.append((chunk, list(range(20_000 + 10 * i, 20_000 + 10 * i + count)), truncated))

    def one_at_a_time(decoder):
        event = decoder.next_event()
        return ([], event) if not isinstance(event, Frame) else ([event], None)

    def in_bulk(decoder):
        frames, after = decoder.next_frames(limit)
        assert len(frames) <= limit
        assert after is not None or frames, "None says: frames were taken"
        return frames, after

    assert _decode_all(feeds, in_bulk) == _decode_all(feeds, one_at_a_time)


def test_next_frames_returns_the_frames_before_a_bad_one_then_raises():
    good, _ = encode(Frame(MESSAGE, b"x"))
    decoder = Decoder()
    decoder.receive_data(good + good + header(size=0, kind=9) + good)
    frames, after = decoder.next_frames(5)
    assert [frame.payload for frame in frames] == [b"x", b"x"] and after is None
    with pytest.raises(ProtocolError, match="unknown frame kind 9"):
        decoder.next_frames(5)
    with pytest.raises(ProtocolError, match="unknown frame kind 9"):
        decoder.next_frames(5)  # for good


@pytest.mark.parametrize("take", ["next_event", "next_frames"])
def test_fds_no_frame_claims_are_found_in_bulk_too(take):
    """fds came with a frame that announced none: the next read's frame shows
    that no frame will claim them."""
    good, _ = encode(Frame(MESSAGE, b"x"))
    closed, close_fd = close_recorder()
    decoder = Decoder(close_fd=close_fd)
    decoder.receive_data(good, [30_000])
    decoder.receive_data(good)
    taken: list = []
    with pytest.raises(ProtocolError, match="fds arrived that no frame claimed"):
        for _ in range(3):
            if take == "next_event":
                taken.append(decoder.next_event())
            else:
                taken += decoder.next_frames(5)[0]
    assert [frame.payload for frame in taken] == [b"x"] and closed == [30_000]


def test_next_frames_stops_at_the_limit_and_at_need_data():
    good, _ = encode(Frame(MESSAGE, b"x"))
    decoder = Decoder()
    decoder.receive_data(good * 3 + good[:5])
    assert [len(decoder.next_frames(2)[0]) for _ in range(2)] == [2, 1]
    assert decoder.next_frames(2) == ([], NEED_DATA)
    decoder.receive_data(good[5:])
    decoder.receive_eof()
    frames, after = decoder.next_frames(2)
    assert len(frames) == 1 and after is CLOSED


# ---------------------------------------------------------------- fuzzing with real fds

#: The fuzzed decoder's ``max_size``: small, so that oversized frames are cheap.
FUZZ_LIMIT = 64


class Piece(NamedTuple):
    """A stretch of a fuzzed stream and the fds that ride with its first byte."""

    kind: str  # "frame" (valid), "garbage", "oversized", "wrong fds", "truncated"
    data: bytes
    nfds: int
    frame: Optional[Frame] = None  # what a "frame" piece decodes to, fds to fill in


def _message(payload: bytes, nfds: int, codec: int, handle: int, ident: int) -> Frame:
    return Frame(MESSAGE, payload, tuple(range(nfds)), codec, handle, 0, ident or int(nfds > 0))


fuzz_messages = st.builds(_message, st.binary(max_size=FUZZ_LIMIT), st.integers(0, 3), u8, u8, u32)
valid_pieces = (fuzz_messages | answers).map(
    lambda frame: Piece("frame", encode(frame)[0], len(frame.fds), frame)
)
garbage_pieces = st.builds(
    lambda data, nfds: Piece("garbage", data, nfds),
    st.binary(min_size=1, max_size=40),
    st.integers(0, 3),
)
oversized_pieces = st.builds(
    lambda size, nfds, tail, sent: Piece(
        "oversized", header(size, nfds=nfds, ident=1) + tail, sent
    ),
    st.integers(FUZZ_LIMIT + 1, 0xFFFFFFFF),
    st.integers(0, 3),
    st.binary(max_size=FUZZ_LIMIT),
    st.integers(0, 3),
)
wrong_fds_pieces = st.builds(  # announces ``nfds`` fds, brings any other count up to 5
    lambda payload, nfds, other: Piece(
        "wrong fds", encode(_message(payload, nfds, 1, 1, 1))[0], other + (other >= nfds)
    ),
    st.binary(max_size=FUZZ_LIMIT),
    st.integers(0, 4),
    st.integers(0, 4),
)


def _truncated(frame: Frame, cut: int) -> Piece:
    data = encode(frame)[0]
    return Piece("truncated", data[: 1 + cut % (len(data) - 1)], len(frame.fds))


truncated_pieces = st.builds(_truncated, fuzz_messages, st.integers(0, 1 << 16))
#: The pieces that break the stream, each in its own way.
BAD_PIECES = {
    "garbage": garbage_pieces,
    "oversized": oversized_pieces,
    "wrong fds": wrong_fds_pieces,
    "truncated": truncated_pieces,
}
any_pieces = st.one_of(valid_pieces, *BAD_PIECES.values())


def open_pipe_fds(count: int) -> list:
    """``count`` real fds, ends of fresh pipes (an odd one out is closed)."""
    fds: list = []
    while len(fds) < count:
        fds.extend(os.pipe())
    for spare in fds[count:]:
        close(spare)
    return fds[:count]


def materialize(pieces: list) -> tuple:
    """Give each piece real fds; return ``(data, owners, frames)`` for the stream.

    ``owners`` is what ``split`` takes; ``frames`` are the "frame" pieces'
    frames with their real fds.
    """
    data, owners, frames = b"", [], []
    for piece in pieces:
        fds = tuple(open_pipe_fds(piece.nfds))
        if fds:
            owners.append((len(data), len(data) + len(piece.data), fds))
        if piece.frame is not None:
            frames.append(piece.frame._replace(fds=fds))
        data += piece.data
    return data, owners, frames


def decode_all(decoder: Decoder, reads: list, eof: bool) -> tuple:
    """Feed every read (and EOF); return ``(frames, error, last_event)``.

    Anything but a Frame, NEED_DATA, CLOSED or a ``ProtocolError`` fails.
    """
    frames, error, event = [], None, NEED_DATA
    steps = [(data, fds, truncated) for data, fds, truncated in reads]
    for step in [*steps, None] if eof else steps:
        try:
            if step is None:
                decoder.receive_eof()
            else:
                decoder.receive_data(*step)
            event = decoder.next_event()
            while isinstance(event, Frame):
                frames.append(event)
                event = decoder.next_event()
            assert event is NEED_DATA or event is CLOSED, event
        except ProtocolError as exc:
            assert exc.code == "ERR_IPC_PROTOCOL" and len(exc.data) <= 64
            assert error is None or str(exc) == str(error), "the first error sticks"
            error = exc
    return frames, error, event


def pipe_identity(fd: int) -> tuple:
    st_ = os.fstat(fd)
    return st_.st_dev, st_.st_ino


@pytest.mark.parametrize("bad", list(BAD_PIECES))
@PROPERTY
@given(
    prefix=st.lists(valid_pieces, max_size=4),
    rest=st.lists(any_pieces, max_size=4),
    eof=st.booleans(),
    data=st.data(),
)
def test_property_real_fds_are_claimed_or_closed(bad, prefix, rest, eof, data):
    """Valid frames, then a ``bad`` piece, then anything (valid frames, garbage,
    oversized frames, wrong fd counts, truncated frames), in random reads with
    real fds: the decoder yields the valid frames, then frames or a
    ``ProtocolError``; each fd it was given ends up in exactly one yielded
    frame, or closed by it, exactly once."""
    pieces = [*prefix, data.draw(BAD_PIECES[bad], label="bad"), *rest]
    stream, owners, expected = materialize(pieces)
    given_fds = [fd for _, _, fds in owners for fd in fds]
    identity = {fd: pipe_identity(fd) for fd in given_fds}
    closed, close_fd = close_recorder(real=True)
    try:
        reads = draw_reads(data, stream, owners, sum(len(piece.data) for piece in prefix))
        decoder = Decoder(max_size=FUZZ_LIMIT, close_fd=close_fd)
        frames, error, event = decode_all(decoder, reads, eof)
        if error is None and event is NEED_DATA:
            decoder.close()
        assert frames[: len(prefix)] == expected[: len(prefix)]
        check_bad_piece(pieces[len(prefix) :], eof, frames[len(prefix) :], error)
        claimed = [fd for frame in frames for fd in frame.fds]
        assert sorted(claimed + closed) == sorted(given_fds), "an fd was leaked or closed twice"
        assert all(pipe_identity(fd) == identity[fd] for fd in claimed)
        assert not any(is_open(fd) for fd in closed)
    finally:
        for fd in set(given_fds) - set(closed):
            close(fd)


def draw_reads(data, stream: bytes, owners: list, prefix_end: int) -> list:
    """Cut ``stream`` at random into ``(bytes, fds, truncated)`` reads.

    MSG_CTRUNC may come with any read that reaches past the valid prefix (a
    frame of the prefix that starts in such a read carries no fds).
    """
    cuts = data.draw(st.sets(st.integers(1, max(1, len(stream) - 1))), label="cuts")
    reads, start = [], 0
    for chunk, read_fds in split(stream, owners, {c for c in cuts if c < len(stream)}):
        start += len(chunk)
        reads.append((chunk, read_fds, start > prefix_end and data.draw(st.booleans())))
    return reads


def check_bad_piece(pieces: list, eof: bool, frames: list, error) -> None:
    """What the first piece after the valid prefix makes of the stream."""
    bad = pieces[0]
    if bad.kind == "oversized":
        assert frames == [] and error is not None
        assert f"over the {FUZZ_LIMIT}-byte limit" in str(error)
    elif bad.kind == "truncated" and len(pieces) == 1:
        assert frames == []
        assert error is None or eof, error
        assert not eof or "EOF inside a frame" in str(error)


def test_fds_in_the_middle_of_an_unfinished_frame_are_closed_as_they_arrive(fds):
    """A peer that never finishes a frame cannot make the decoder hold fds.

    Before the frame's end is known, a read carrying fds that begins no frame
    raises at once, and its fds are closed then, not when the frame ends.
    """
    start = header(1000, nfds=1, ident=1)
    first = fds(1)
    decoder = Decoder(close_fd=close)
    decoder.receive_data(start + b"a", first)
    assert decoder.next_event() is NEED_DATA
    middle = fds(2)
    with pytest.raises(ProtocolError, match="middle of a frame"):
        decoder.receive_data(b"b" * 10, middle)
    assert not any(is_open(fd) for fd in (*first, *middle))


def test_fds_with_a_read_that_begins_a_frame_after_whole_ones_are_kept(fds):
    """fd-less frames may come ahead of the fd frame in its read (as on Linux)."""
    plain = encode(Frame(MESSAGE, b"p"))[0]
    sent = fds(1)
    with_fd = encode(Frame(MESSAGE, b"h", sent, ident=2))[0]
    decoder = Decoder(close_fd=close)
    decoder.receive_data(plain[:3])
    decoder.receive_data(plain[3:] + with_fd[:5], sent)
    decoder.receive_data(with_fd[5:])
    assert drain(decoder)[:-1] == [Frame(MESSAGE, b"p"), Frame(MESSAGE, b"h", sent, ident=2)]


@pytest.mark.parametrize(
    "fields",
    [dict(), dict(ident=7), dict(ident=9, handle=1, flags=3, nfds=1)],
    ids=["plain", "acknowledged", "with a handle"],
)
def test_encode_message_is_encode_without_the_checks(fields):
    nfds = fields.pop("nfds", 0)
    frame = Frame(MESSAGE, b"payload", tuple(range(nfds)), 2, **fields)
    assert encode_message(b"payload", 2, nfds=nfds, **fields) == encode(frame)[0]
