"""The channel's wire format: a sans-IO core, bytes and fds in, frames out.

This module does no I/O and imports no gevent: it only turns frames into
bytes plus file descriptors, and back.

A frame is a fixed 14-byte header followed by ``size`` bytes of payload::

    0        4      5       6        7       8        10         14
    +--------+------+-------+--------+-------+--------+----------+---------+
    | size   | kind | codec | handle | flags | nfds   | ident    | payload |
    | u32 BE | u8   | u8    | u8     | u8    | u16 BE | u32 BE   | size B  |
    +--------+------+-------+--------+-------+--------+----------+---------+

Rules that govern changes to the format:

* ``kind`` is MESSAGE, ACK, NACK or DONE. ACK, NACK and DONE carry no
  payload and no fds; their ``ident`` names the MESSAGE they answer.
* A MESSAGE with ``nfds > 0`` has a non-zero ``ident`` and must be answered
  by exactly one ACK (the handle is in the receiver's hands) or NACK (its
  fds were lost, ``MSG_CTRUNC``: the sender still owns the handle). A
  MESSAGE without fds but with a non-zero ``ident`` asks for an ACK too.
  The receiver sends the ACK when the message is taken: on receipt, before
  it is handled, or, for one kept for a ``recv()`` call, when ``recv()``
  returns it (until then the sender still owns the handle).
* DONE follows the ACK of a MESSAGE whose handle the sender asked to hear
  about (a flag of the handle's, meaningless here): the receiver is done with
  the handle, and the sender may close its own copy.
* The sender attaches a frame's fds to the ``sendmsg`` whose data begins
  with that frame's first byte, and to no other. On Linux a read stops after
  the chunk carrying fds, so each fd belongs to the frame whose first byte
  arrived in the same read (Node relies on the same: SCM_RIGHTS messages are
  not coalesced). fds that arrive with a read in which no frame begins are
  closed at once and are a protocol error, so a peer can make the receiver
  hold no more fds than one read brings (at most 253) for the one frame it
  has not finished. A batch of fds claimed by no frame, or a frame that
  announces another number of fds than arrived with it, is a protocol error
  once the frame is complete.
* EOF between frames is a clean close; EOF inside a frame is a protocol
  error. Every fd the decoder was given and no frame claimed is closed.
* New kinds, codecs and handle types get new numbers; numbers are never
  reused. ``codec``, ``handle`` and ``flags`` mean nothing to this module.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from typing import (
    Callable,
    Deque,
    List,
    NamedTuple,
    NoReturn,
    Optional,
    Sequence,
    Tuple,
    Type,
    Union,
)

from .errors import ProtocolError

__all__ = [
    "MESSAGE",
    "ACK",
    "NACK",
    "DONE",
    "HEADER",
    "MAX_FDS",
    "MAX_FRAME_SIZE",
    "NEED_DATA",
    "CLOSED",
    "Sentinel",
    "Frame",
    "Decoder",
    "encode",
    "encode_message",
    "encode_ack",
]

MESSAGE = 1
ACK = 2
NACK = 3
DONE = 4
_KINDS = (MESSAGE, ACK, NACK, DONE)

HEADER = struct.Struct("!IBBBBHI")
_pack_header = HEADER.pack
_unpack_header = HEADER.unpack_from
_HEADER_SIZE = HEADER.size

#: Linux refuses more fds in one message with EINVAL (``SCM_MAX_FD``).
MAX_FDS = 253

#: Largest payload accepted by default. Node's pipes take anything that fits in
#: memory; h11 and gunicorn cap what a peer may make them buffer. 64 MiB is
#: four times the largest message the tests send (16 MiB) and bounds what a
#: broken or hostile peer can make the receiver allocate before it is caught.
MAX_FRAME_SIZE = 64 * 1024 * 1024

# Compact the receive buffer once this many consumed bytes sit at its front,
# so that a read holding many small frames is parsed without a copy per frame.
_COMPACT_AT = 256 * 1024


class Sentinel(type):
    """The type of a sentinel class, which is its own value (h11's ``NEED_DATA``).

    A class, unlike an instance, is something a type checker can narrow on:
    after ``if isinstance(event, Sentinel): ...`` the event is a ``Frame``,
    inside it ``type[NEED_DATA] | type[CLOSED]``.
    """

    def __repr__(cls) -> str:
        return cls.__name__


class NEED_DATA(metaclass=Sentinel):
    """``next_event()``: no whole frame is buffered yet."""


class CLOSED(metaclass=Sentinel):
    """``next_event()``: the peer closed the stream cleanly between frames."""


class Frame(NamedTuple):
    """One frame: what ``encode`` takes and ``Decoder.next_event`` returns."""

    kind: int
    payload: bytes = b""
    fds: Tuple[int, ...] = ()
    codec: int = 0
    handle: int = 0
    flags: int = 0
    ident: int = 0
    #: True when the kernel dropped some of this frame's fds (``MSG_CTRUNC``);
    #: ``fds`` then holds only those that arrived.
    fds_lost: bool = False


#: What ``next_event`` returns when it has no frame to give.
NoFrame = Union[Type[NEED_DATA], Type[CLOSED]]
Event = Union[Frame, NoFrame]
#: Bytes kept as a protocol error's evidence: any bytes-like slice of the stream.
Evidence = Union[bytes, bytearray, memoryview]
_new_frame = tuple.__new__  # Frame(...) without the generated __new__'s extra call


def encode(frame: Frame) -> Tuple[bytes, List[int]]:
    """Return ``(data, fds)`` for ``frame``; send the fds with ``data[0]``.

    Raises:
        ValueError: the frame breaks a rule of the format (too many fds,
            payload too large, an ACK with a payload).
    """
    nfds = len(frame.fds)
    if nfds > MAX_FDS:
        raise ValueError(f"at most {MAX_FDS} fds ride with one frame, not {nfds}")
    if frame.kind not in _KINDS:
        raise ValueError(f"unknown frame kind {frame.kind}")
    if frame.kind != MESSAGE and (frame.payload or nfds):
        raise ValueError("ACK, NACK and DONE frames carry no payload and no fds")
    if nfds and not frame.ident:
        raise ValueError("a MESSAGE with fds needs a non-zero ident")
    try:
        header = HEADER.pack(
            len(frame.payload),
            frame.kind,
            frame.codec,
            frame.handle,
            frame.flags,
            nfds,
            frame.ident,
        )
    except struct.error as exc:
        raise ValueError(f"frame field out of range: {exc}") from exc
    return header + frame.payload, list(frame.fds)


def encode_message(
    payload: bytes, codec: int, ident: int = 0, handle: int = 0, flags: int = 0, nfds: int = 0
) -> bytes:
    """The bytes of a MESSAGE frame, for a sender that checked its fields itself.

    ``encode()`` checks every rule and builds a ``Frame``; a channel sending
    thousands of messages a second has checked them already (its codec, its
    own idents, at most one fd), so this packs the header and nothing more.
    """
    return _pack_header(len(payload), MESSAGE, codec, handle, flags, nfds, ident) + payload


def encode_ack(ident: int, kind: int = ACK) -> bytes:
    """The bytes of an ACK (or NACK, or DONE) frame answering MESSAGE ``ident``."""
    return HEADER.pack(0, kind, 0, 0, 0, 0, ident)


class _FdBatch(NamedTuple):
    start: int  # stream offset of the first byte of the read the fds came with
    end: int  # stream offset just past that read
    fds: List[int]
    truncated: bool


class Decoder:
    """Turn the bytes and fds read from the channel into frames.

    Args:
        max_size: the largest payload accepted; a larger one is a
            ``ProtocolError`` as soon as its header arrives.
        close_fd: how to close an fd no frame claims (``os.close``).
    """

    def __init__(
        self,
        max_size: int = MAX_FRAME_SIZE,
        close_fd: Callable[[int], None] = os.close,
    ) -> None:
        self.max_size = max_size
        self._close_fd = close_fd
        self._buf = bytearray()
        self._pos = 0  # read position in _buf
        self._base = 0  # stream offset of _buf[0]
        self._batches: Deque[_FdBatch] = deque()
        self._eof = False
        self._error: ProtocolError | None = None

    def receive_data(
        self, data: Evidence, fds: Sequence[int] = (), truncated: bool = False
    ) -> None:
        """Add bytes read from the stream, with the fds that came with them.

        Args:
            data: the bytes of one read; must not be empty.
            fds: the fds that read returned (``SCM_RIGHTS``).
            truncated: the read reported ``MSG_CTRUNC`` (fds were lost).
        """
        if self._error is not None or self._eof:
            self._close_all(fds)
            return
        start = self._base + len(self._buf)
        if fds or truncated:
            if not data:
                self._close_all(fds)
                self._reject("fds arrived with no bytes", b"")
            if fds:
                self._check_fds(data, fds)
            self._batches.append(_FdBatch(start, start + len(data), list(fds), truncated))
        self._buf += data

    def _check_fds(self, data: Evidence, fds: Sequence[int]) -> None:
        """Fail, closing ``fds``, unless a frame begins in the read they came with.

        Checked as the fds arrive, not when their frame is complete: a peer
        that never finishes a frame must not make us hold fds meanwhile.
        """
        buf, offset = self._buf, self._pos
        while offset < len(buf):  # to the first frame boundary at or after this read
            head = bytes(buf[offset : offset + _HEADER_SIZE])
            if len(head) < _HEADER_SIZE:
                head += bytes(data[: _HEADER_SIZE - len(head)])
                if len(head) < _HEADER_SIZE:
                    break  # where this frame ends is not known yet: past this read
            size = _unpack_header(head)[0]
            if size > self.max_size:
                return  # next_event() fails on this header, and closes every fd
            offset += _HEADER_SIZE + size
        if not len(buf) <= offset < len(buf) + len(data):
            self._close_all(fds)
            self._reject("fds arrived in the middle of a frame", bytes(data[:64]))

    def receive_eof(self) -> None:
        """The peer closed its end; ``next_event`` will say whether cleanly."""
        self._eof = True

    @property
    def buffered(self) -> int:
        """How many received bytes are not yet part of a returned frame."""
        return len(self._buf) - self._pos

    def next_event(self) -> Event:
        """Return the next whole ``Frame``, ``NEED_DATA`` or ``CLOSED``.

        Raises:
            ProtocolError: malformed input. The decoder is then broken for
                good, every fd it holds is closed, and later calls raise again.
        """
        if self._error is not None:
            raise self._error.with_traceback(None)
        buf, pos = self._buf, self._pos
        available = len(buf) - pos
        if available < _HEADER_SIZE:
            return self._starved(available)
        size, kind, codec, handle, flags, nfds, ident = _unpack_header(buf, pos)
        if nfds or size > self.max_size or (kind != MESSAGE and (size or kind not in _KINDS)):
            self._check_header(buf, pos, size, kind, nfds, ident)
        start = pos + _HEADER_SIZE
        end = start + size
        if len(buf) < end:
            return self._starved(available)
        if nfds or self._batches:
            fds, lost = self._claim(self._base + pos, nfds, buf[pos : pos + 64])
        else:
            fds, lost = (), False
        payload = bytes(buf[start:end])
        self._consumed(end)
        return _new_frame(Frame, (kind, payload, fds, codec, handle, flags, ident, lost))

    def _consumed(self, end: int) -> None:
        """The buffer's bytes before ``end`` are taken: forget them, copying
        only once they are many (or none is left)."""
        if end == len(self._buf):
            self._base += end
            self._buf = bytearray()
            self._pos = 0
        elif end >= _COMPACT_AT:
            del self._buf[:end]
            self._base += end
            self._pos = 0
        else:
            self._pos = end

    def next_frames(self, limit: int) -> Tuple[List[Frame], Optional[NoFrame]]:
        """Up to ``limit`` whole frames at once, and what ``next_event`` would say next.

        The same frames, in the same order, as ``limit`` calls of
        ``next_event``, for a reader handling a read's frames in one go:
        frames without fds are cut from the buffer in one loop.

        Returns:
            ``(frames, after)``: ``after`` is what ``next_event`` returned
            after the last of them, ``NEED_DATA`` or ``CLOSED``, or None
            when ``limit`` frames were taken (more may be whole).

        Raises:
            ProtocolError: as ``next_event``, once the frames before the
                bad one have been returned.
        """
        frames: List[Frame] = []
        append = frames.append
        buf, pos, max_size = self._buf, self._pos, self.max_size
        length = len(buf)
        starved = False  # the fast loop stopped at a frame not yet whole
        while len(frames) < limit:
            if self._batches or self._error is not None:
                break
            if length - pos < _HEADER_SIZE:
                starved = True
                break
            size, kind, codec, handle, flags, nfds, ident = _unpack_header(buf, pos)
            if nfds or size > max_size or (kind != MESSAGE and (size or kind not in _KINDS)):
                break  # next_event() says what is wrong with it, or takes its fds
            start = pos + _HEADER_SIZE
            end = start + size
            if end > length:
                starved = True
                break
            append(
                _new_frame(
                    Frame, (kind, bytes(buf[start:end]), (), codec, handle, flags, ident, False)
                )
            )
            pos = end
        self._consumed(pos)
        if starved and not self._eof:
            return frames, NEED_DATA
        while len(frames) < limit:
            try:
                event = self.next_event()
            except ProtocolError:
                if frames:
                    return frames, None  # theirs first: the next call raises
                raise
            if isinstance(event, Sentinel):
                return frames, event
            append(event)
        return frames, None

    def _check_header(
        self, buf: bytearray, pos: int, size: int, kind: int, nfds: int, ident: int
    ) -> None:
        """Raise for a header that breaks the format's rules."""
        if kind not in _KINDS:
            self._reject(f"unknown frame kind {kind}", buf[pos : pos + 64])
        if size > self.max_size:
            self._reject(
                f"frame of {size} bytes is over the {self.max_size}-byte limit",
                buf[pos : pos + 64],
            )
        if nfds > MAX_FDS or (kind != MESSAGE and (size or nfds)) or (nfds and not ident):
            self._reject(f"malformed frame header (kind {kind}, {nfds} fds)", buf[pos : pos + 64])

    def close(self) -> None:
        """Close every fd still held; the decoder must not be used after."""
        for batch in self._batches:
            self._close_all(batch.fds)
        self._batches.clear()

    def _starved(self, available: int) -> Event:
        if not self._eof:
            return NEED_DATA
        if available:
            self._reject(
                f"EOF inside a frame ({available} bytes of it arrived)",
                self._buf[self._pos : self._pos + 64],
            )
        if self._batches:
            self._reject("fds arrived that no frame claimed", b"")
        return CLOSED

    def _claim(self, start: int, nfds: int, evidence: Evidence) -> Tuple[Tuple[int, ...], bool]:
        batches = self._batches
        if batches and batches[0].end <= start:
            self._reject("fds arrived that no frame claimed", evidence)
        if not nfds:
            return (), False
        if not batches or not batches[0].start <= start < batches[0].end:
            self._reject(f"frame announces {nfds} fds but none arrived with it", evidence)
        batch = batches[0]
        if len(batch.fds) == nfds:
            batches.popleft()
            return tuple(batch.fds), False
        if len(batch.fds) < nfds and batch.truncated:
            batches.popleft()
            return tuple(batch.fds), True
        self._reject(f"frame announces {nfds} fds but {len(batch.fds)} arrived", evidence)

    def _reject(self, msg: str, evidence: Evidence) -> NoReturn:
        self._error = ProtocolError(msg, bytes(evidence))
        self.close()
        raise self._error

    def _close_all(self, fds: Sequence[int]) -> None:
        for fd in fds:
            try:
                self._close_fd(fd)
            except OSError:
                pass
