"""The IPC channel: the thin gevent layer over the sans-IO ``_wire`` core.

The read watcher's callback reads, in the hub (``recvmsg`` -> ``Decoder`` ->
the owner, which hands each message on); writes are queued and flushed from
the event loop, coalesced into one ``sendmsg`` per batch.
The socket is the raw ``_socket.socket`` and the waits are our own io
watchers, so that ``ref()``/``unref()`` decide whether the channel keeps the
process alive, the way libuv handles do in Node.
"""

from __future__ import annotations

import _socket
import enum
import errno
import socket
import sys
import time
from array import array
from collections import deque
from functools import partial
from itertools import islice
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Deque,
    Dict,
    List,
    Mapping,
    NoReturn,
    Optional,
    Protocol,
    Set,
    Tuple,
    Union,
    cast,
)

from gevent import get_hub

from . import _handles, _platform, _wire
from ._dispatch import submit
from ._serialization import Codec, describe
from .errors import (
    ChannelBusyError,
    ChannelClosedError,
    HandleLostError,
    ProtocolError,
    SerializationError,
)

__all__ = ["Channel", "Owner", "State", "HIGH_WATER_MARK", "MAX_QUEUED", "HANDLE_WEIGHT"]


#: ``send()`` returns False once this many bytes are queued, counting each
#: handle awaiting its acknowledgment as ``HANDLE_WEIGHT`` bytes (Node: 128 KiB).
HIGH_WATER_MARK = 128 * 1024
#: What a handle awaiting acknowledgment counts for, in bytes: it holds an fd
#: (and, for a socket, a client) rather than memory, so 128 of them in flight
#: to a worker that does not answer reach the high-water mark.
HANDLE_WEIGHT = 1024
#: Default ``max_queued``: past it, ``send()`` raises ``ChannelBusyError``
#: rather than let a peer that does not read grow the queue without bound.
MAX_QUEUED = 64 * 1024 * 1024
#: The reader hands the hub back after this many frames, or after
#: ``READ_SLICE`` seconds, so a peer flooding the channel cannot starve the
#: process's other greenlets (a flood once held the hub for 152 ms).
READ_BATCH = 64
READ_SLICE = 0.001
#: Bytes asked of one ``recvmsg``. gipc reads 64 KiB; larger reads halve the
#: syscalls for streams of small messages and for multi-MiB messages.
READ_SIZE = 256 * 1024
#: Bytes coalesced into one ``sendmsg`` before it is issued.
WRITE_BATCH = 256 * 1024
#: Queued bytes past which a run of ``send()`` calls in one turn of the loop
#: writes what the socket takes at once, rather than when the loop next runs,
#: so the peer works on them meanwhile (streams of small messages: 1.7x).
WRITE_AHEAD = 64 * 1024
#: Buffers per ``sendmsg``; Linux's ``IOV_MAX`` is 1024.
MAX_IOV = 512

_ANC_SIZE = _platform.anc_buffer_size()
_RIGHTS = (socket.SOL_SOCKET, socket.SCM_RIGHTS)
_CTRUNC = int(socket.MSG_CTRUNC)
_encode_message = _wire.encode_message
_MESSAGE = _wire.MESSAGE
#: ``sendmsg`` errors that say the channel itself is gone; any other error of a
#: send that carries fds is about those fds, and fails that message only.
_BROKEN = frozenset((errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN))
Callback = Callable[[Optional[BaseException]], object]
#: A send callback to run, with its argument: ``(callback, err)``; a None
#: callback leaves ``err`` to the owner's ``on_channel_error``.
_Call = Tuple[Optional[Callback], Optional[BaseException]]
#: Bytes queued or being written: a frame, or what a short write left of it.
_Data = Union[bytes, memoryview]


if TYPE_CHECKING:  # pragma: no cover
    from gevent._types import _IoWatcher as _StubIoWatcher

    class _IoWatcher(_StubIoWatcher, Protocol):
        """A gevent io watcher with the ``active`` and ``ref`` that gevent
        documents (``gevent._interfaces.IWatcher``) and its stubs omit."""

        ref: bool

        @property
        def active(self) -> bool: ...


def _without_err(fn: Callable[[], object]) -> Callback:
    """``fn`` as a send callback: it is called with the error, which it ignores."""
    return lambda err: fn()


class Owner(Protocol):
    """What a ``Channel`` reports to: a ``ChildProcess``, or ``process``.

    Public hook methods (gevent's ``do_read``/``do_close`` style), so that
    the channel calls nothing private of its owner's.
    """

    @property
    def receiving(self) -> bool:
        """Whether a message now would be kept for ``recv()`` (its ACK then waits)."""

    def on_channel_message(
        self, message: Any, handle: Optional[_handles.Handle], ident: int = 0
    ) -> None:
        """A message (and its handle, or None) arrived; a non-zero ``ident`` is
        to be acknowledged (``Channel.acknowledge``) when ``recv()`` takes it."""

    def on_channel_error(self, err: BaseException) -> None:
        """A failure with no send callback to take it (a bad frame, a lost handle)."""

    def on_channel_closed(self) -> None:
        """The channel left the living (``'disconnect'``), once."""

    def on_channel_read(self) -> None:
        """The channel handled what it read for now, in the hub: the moment
        to wake a ``recv()`` waiting for the messages kept meanwhile."""


class State(enum.Enum):
    """Where a channel is in its life; ``Channel._to`` is the only place it changes.

    ::

        OPEN ──disconnect()──> DISCONNECTING ──queue written, no handle held──> HALF_CLOSED
          │                        │                                                │
          │  the peer's EOF, handles held ──> FINISHING ──none held any more──┐     │
          │                                                                   v     v
          └─ close(), the peer's EOF, an error, a bad frame ─────────────────────> CLOSED

    * OPEN: messages go both ways.
    * DISCONNECTING: ``disconnect()`` was called. ``send()`` raises; what is
      queued is written, and DONE for every handle we still hold whose
      sender asked for it; nothing that needs an ACK is taken any more.
    * HALF_CLOSED: our write side is shut down; we read the peer's ACKs
      until its EOF.
    * FINISHING: the peer closed its end (from OPEN or DISCONNECTING) while
      we hold handles whose sender asked for DONE: nothing more is read,
      sends awaiting an ACK have failed, and we stay open to write each DONE
      as its handle is done with (a pool that closed its workers' channels
      learns at once that a connection was served), then close.
    * CLOSED: the socket is closed; every queued or unacknowledged send
      has failed.

    The owner hears ``'disconnect'`` once, on leaving OPEN or DISCONNECTING
    for HALF_CLOSED or CLOSED.
    """

    OPEN = "open"
    DISCONNECTING = "disconnecting"
    HALF_CLOSED = "half-closed"
    FINISHING = "finishing"
    CLOSED = "closed"


_SHUTTING = (State.DISCONNECTING, State.HALF_CLOSED, State.FINISHING)
#: The states the owner has heard ``'disconnect'`` for.
_GONE = (State.HALF_CLOSED, State.FINISHING, State.CLOSED)
# The states the per-message paths test, as plain names: an Enum member looked
# up on its class costs 50 ns on Python 3.11, several times a message.
_OPEN = State.OPEN
_CLOSED = State.CLOSED


class _Pending:
    """A sent message waiting for the receiver's ACK: one with a handle, or one
    sent with ``acknowledge=True``."""

    __slots__ = ("callback", "handle", "outgoing", "keep_open", "on_done")

    def __init__(
        self,
        callback: Optional[Callback],
        handle: Optional[_handles.Handle],
        outgoing: Optional[_handles.Outgoing],
        keep_open: bool,
        on_done: Optional[Callable[[], object]],
    ) -> None:
        self.callback = callback
        self.handle = handle
        self.outgoing = outgoing
        self.keep_open = keep_open
        self.on_done = on_done


class Channel:
    """One end of an IPC channel (``process.channel``, ``child.channel``).

    Args:
        sock: a connected ``AF_UNIX`` stream socket; the channel owns it.
        owner: the ``ChildProcess`` or ``process`` it reports to, through
            ``on_channel_message(message, handle)`` and ``on_channel_read()``
            (in the hub: they must not wait), ``on_channel_error(err)`` and
            ``on_channel_closed()`` (in a greenlet of their own).
        codec: how this end encodes messages (it decodes whatever codec each
            frame names).
        max_size: the largest message payload sent or accepted.
        ref: whether the channel keeps the process alive to begin with.
        max_queued: the most bytes ``send()`` queues (handles awaiting their
            acknowledgment count ``HANDLE_WEIGHT`` each) before it raises
            ``ChannelBusyError``.
    """

    def __init__(
        self,
        sock: _socket.socket,
        owner: Owner,
        codec: Codec,
        max_size: int = _wire.MAX_FRAME_SIZE,
        ref: bool = True,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._owner = owner
        self._codec = codec
        self.max_size = max_size
        self.max_queued = max_queued
        self._decoder = _wire.Decoder(max_size, _platform.close_quietly)
        loop = self._loop = get_hub().loop
        self._counts_turns = hasattr(loop, "iteration")  # libev's loop does, libuv's not
        self._written_in = -1  # the loop iteration of the last _write_now
        # Casts: the stubs' watcher type lacks ``active`` and ``ref`` (see _IoWatcher).
        self._read_watcher = cast("_IoWatcher", loop.io(self._fd, 1))
        self._write_watcher = cast("_IoWatcher", loop.io(self._fd, 2))
        # Frames a read left for later are handled once the loop is idle (_read).
        self._resume = cast("_IoWatcher", loop.idle())
        # [data, fds, callback-or-None, ident]: a list, as a short write replaces its data
        self._queue: Deque[List[Any]] = deque()
        self._queued_bytes = 0
        self._flush_scheduled = False
        self._write_at = WRITE_AHEAD  # queued bytes at which _enqueue writes at once
        self._awaiting: Dict[int, _Pending] = {}
        self._handles_awaiting = 0  # of _awaiting, those carrying a handle
        # ident -> on_done, once the receiver has the handle
        self._tracked: Dict[int, Callable[[], object]] = {}
        self._holding: Set[int] = set()  # idents of received handles whose sender awaits DONE
        self._next_ident = 0
        self.state = State.OPEN
        self._refs = 0
        self._explicit_ref: Optional[bool] = None
        self._default_ref = ref
        self._apply_ref()
        # Reading runs in the hub, in the read watcher's callback: no greenlet
        # of its own, so a message costs no switch until it reaches whoever
        # takes it (a recv() caller, a listener's runner). recvmsg() would
        # allocate READ_SIZE bytes per call, which costs more than the read
        # itself for a small message: read into one buffer.
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        self._read_watcher.start(self._on_readable)

    # -- public ---------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether ``send()`` may be called: the channel is OPEN."""
        return self.state is _OPEN

    def fileno(self) -> int:
        """The channel's file descriptor (-1 once closed)."""
        return -1 if self.state is State.CLOSED else self._fd

    def ref(self) -> None:
        """Keep the process alive while the channel is open."""
        self._explicit_ref = True
        self._apply_ref()

    def unref(self) -> None:
        """Let the process exit while the channel is still open."""
        self._explicit_ref = False
        self._apply_ref()

    def send(
        self,
        message: Any,
        handle: Optional[_handles.Handle] = None,
        options: Optional[Mapping[str, Any]] = None,
        callback: Optional[Callback] = None,
        *,
        acknowledge: bool = False,
        on_done: Optional[Callable[[], object]] = None,
    ) -> bool:
        """Queue ``message`` (and ``handle``) for the peer; see ``ChildProcess.send``.

        Args:
            acknowledge: for a message without a handle, ask the receiver for
                an ACK on receipt; ``callback(None)`` then waits for it (a
                message with a handle is always acknowledged).
            on_done: with a ``net.Socket`` handle, called (no arguments) once
                the receiving process is done with the connection, so that a
                sender that kept its copy (``keep_open``) may close it. Never
                called if the channel closes first.

        Raises:
            ChannelClosedError: the channel is already closed or disconnecting.
            ChannelBusyError: ``max_queued`` would be passed; nothing was queued.
            SerializationError: ``message`` cannot be encoded, or is too big.
            InvalidHandleTypeError: ``handle`` is not a kind ``send`` accepts.
            ValueError: ``handle`` is already on its way somewhere.
        """
        if self.state is not _OPEN:
            raise ChannelClosedError("the IPC channel is closed")
        payload = self._codec.dumps(message)
        limit = self.max_size - (_handles.MAX_TRAILER if handle is not None else 0)
        if len(payload) > limit:
            raise SerializationError(
                f"message of {len(payload)} bytes is over the channel's "
                f"{self.max_size}-byte limit"
                + (
                    f" ({_handles.MAX_TRAILER} bytes of it ride with a handle)"
                    if handle is not None
                    else ""
                )
            )
        queued = self._queued_bytes + self._handles_awaiting * HANDLE_WEIGHT  # _backlog()
        if queued + len(payload) > self.max_queued:
            raise ChannelBusyError(
                f"{queued} bytes are queued for the peer: a message of {len(payload)} "
                f"bytes would pass the channel's max_queued of {self.max_queued}"
            )
        if handle is None:
            # Later messages of this turn of the loop coalesce behind the first.
            now = not self._flush_scheduled and (
                not self._counts_turns or self._loop.iteration != self._written_in
            )
            if not acknowledge:
                data = _encode_message(payload, self._codec.ident)
                return self._send_frame(data, (), callback, 0, now)
            ident = self._new_ident()
            self._awaiting[ident] = _Pending(callback, None, None, False, None)
            data = _encode_message(payload, self._codec.ident, ident)
            return self._send_frame(data, (), None, ident, now)
        # Last of the checks: to_wire() takes a net.Socket over (stops its
        # reader), which a send that then raised must not have done.
        out = _handles.to_wire(handle, track=on_done is not None)
        ident = self._new_ident()
        keep_open = bool(options and options.get("keep_open"))
        self._awaiting[ident] = _Pending(callback, handle, out, keep_open, on_done)
        self._handles_awaiting += 1
        data = _encode_message(
            payload + out.trailer if out.trailer else payload,
            self._codec.ident,
            ident,
            out.code,
            out.flags,
            1,
        )
        return self._send_frame(
            data, (out.fd,), None, ident, True
        )  # its fd needs a sendmsg of its own

    def _new_ident(self) -> int:
        ident = self._next_ident
        while True:
            ident = ident % 0xFFFFFFFF + 1
            if ident not in self._awaiting and ident not in self._tracked:
                self._next_ident = ident
                return ident

    def _send_frame(
        self, data: _Data, fds: Tuple[int, ...], callback: Optional[Callback], ident: int, now: bool
    ) -> bool:
        """Write a frame at once if ``now`` and nothing is queued, else queue it."""
        if now and not self._queue and not self._write_watcher.active:
            data, fds = self._write_now(data, fds, callback)
            if not data:  # (the common case: _below_high_water(), inline)
                return self._queued_bytes + self._handles_awaiting * HANDLE_WEIGHT < HIGH_WATER_MARK
            # The socket just took what it could: no write-ahead for this rest.
            self._write_at = self._queued_bytes + len(data) + WRITE_AHEAD
        self._enqueue(data, fds, callback, ident)
        return self._below_high_water()

    def _backlog(self) -> int:
        """Bytes queued, plus ``HANDLE_WEIGHT`` for each handle awaiting its ACK."""
        return self._queued_bytes + self._handles_awaiting * HANDLE_WEIGHT

    def _below_high_water(self) -> bool:
        return self._backlog() < HIGH_WATER_MARK

    def _settle(self, ident: int) -> Optional[_Pending]:
        """Take the send ``ident`` out of those awaiting an ACK, if it is there."""
        pending = self._awaiting.pop(ident, None)
        if pending is not None and pending.outgoing is not None:
            self._handles_awaiting -= 1
        return pending

    def disconnect(self) -> None:
        """Flush what is queued, then close; both ends get ``'disconnect'``."""
        if self.state is State.OPEN:
            self._to(State.DISCONNECTING)
            self._schedule_flush()

    def close(self) -> None:
        """Close at once: queued messages and unacknowledged handles fail."""
        self._shut_down(ChannelClosedError("the IPC channel was closed"))

    # -- writing --------------------------------------------------------

    def _enqueue(
        self, data: _Data, fds: Tuple[int, ...], callback: Optional[Callback], ident: int = 0
    ) -> None:
        self._queue.append([data, fds, callback, ident])
        self._queued_bytes += len(data)
        if self._queued_bytes >= self._write_at:
            # A long run of sends in one turn of the loop: write what the
            # socket takes now, even while the write watcher waits, so the
            # peer works on them while we go on (as libuv tries each write).
            self._flush()
        elif not self._flush_scheduled:
            self._schedule_flush()

    def _write_now(
        self, data: _Data, fds: Tuple[int, ...], callback: Optional[Callback]
    ) -> Tuple[_Data, Tuple[int, ...]]:
        """Write a message at once, nothing being queued (as libuv does).

        Returns what is left to queue, ``(data, fds)``; ``data`` is empty
        when the kernel took it all.
        """
        if self._counts_turns:
            self._written_in = self._loop.iteration
        else:  # a loop that does not count its turns (libuv): a flush ends this one
            self._flush_scheduled = True
            self._loop.run_callback(self._scheduled_flush)
        try:
            if fds:
                sent = self._sock.sendmsg([data], [(*_RIGHTS, array("i", fds))])
            else:
                sent = self._sock.send(data)
        except OSError:  # full (EAGAIN), or broken: the flush finds out which
            sent = 0
        if not sent:
            return data, fds
        if sent < len(data):
            return memoryview(data)[sent:], ()  # the fds went with the first byte
        if callback is not None:
            self._finish([(callback, None)])
        return b"", ()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and not self._write_watcher.active:
            self._flush_scheduled = True
            get_hub().loop.run_callback(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def _flush(self) -> None:
        """Write what the socket takes now (never blocks)."""
        self._write_watcher.stop()
        if self.state is State.CLOSED:
            return
        done: List[_Call] = []
        try:
            self._write_some(done)
        except OSError as exc:
            self._finish(done)
            self._shut_down(ChannelClosedError(f"the IPC channel broke: {exc}"))
            return
        self._write_at = self._queued_bytes + WRITE_AHEAD
        self._finish(done)
        if not self._queue and not self._holding:
            if self.state is State.DISCONNECTING:
                self._half_close()
            elif self.state is State.FINISHING:
                self._shut_down(None)

    def _write_some(self, done: List[_Call]) -> None:
        queue, sock = self._queue, self._sock
        while queue:
            first = queue[0]
            buffers = [first[0]]
            size = len(first[0])
            for item in islice(queue, 1, MAX_IOV):
                if item[1] or size >= WRITE_BATCH:
                    break  # fds ride only with the first byte of a sendmsg
                buffers.append(item[0])
                size += len(item[0])
            anc = [(*_RIGHTS, array("i", first[1]))] if first[1] else ()
            try:
                sent = sock.sendmsg(buffers, anc)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                if not first[1] or exc.errno in _BROKEN:
                    raise
                self._drop_first(exc, done)  # its fds were refused: fail it alone
                continue
            if not sent:
                self._write_watcher.start(self._flush)
                return
            self._queued_bytes -= sent
            while sent:
                item = queue[0]
                length = len(item[0])
                if sent < length:
                    item[0] = memoryview(item[0])[sent:]
                    item[1] = ()  # the fds went with the first chunk
                    break
                sent -= length
                queue.popleft()
                if item[2] is not None:
                    done.append((item[2], None))

    def _drop_first(self, exc: OSError, done: List[_Call]) -> None:
        """Fail the queue's first message, whose fds ``sendmsg`` refused."""
        data, _fds, callback, ident = self._queue.popleft()
        self._queued_bytes -= len(data)
        pending = self._settle(ident)
        if pending is not None:
            self._lost(pending, exc, done)
        elif callback is not None:
            done.append((callback, exc))

    def _half_close(self) -> None:
        """Our side is done writing: tell the peer, keep reading its ACKs."""
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._to(State.HALF_CLOSED)

    # -- reading --------------------------------------------------------

    def _on_readable(self) -> None:
        """The read and resume watchers' callback, in the hub; a failure closes the channel."""
        try:
            self._read()
            self._owner.on_channel_read()
        except ProtocolError as err:
            self._report(err)
            self._shut_down(ChannelClosedError(f"the IPC channel closed on a bad frame: {err}"))
        except ChannelClosedError as err:
            self._shut_down(err)
        except Exception as exc:  # our bug: say so, and fail every send cleanly
            get_hub().handle_error(self, *sys.exc_info())
            self._shut_down(ChannelClosedError(f"the IPC channel failed: {exc!r}"))

    def _read(self) -> None:
        """Handle the frames buffered, reading while the socket has more.

        Runs in the hub and never waits: it returns when the socket is
        empty, and when a batch of ``READ_BATCH`` frames or ``READ_SLICE``
        seconds is used up, so a peer flooding the channel cannot starve
        this process's greenlets. Frames still buffered then are handled
        once the loop has run everything else that is ready (``_resume``,
        an idle watcher, as ``gevent.idle``); until then nothing more is
        read, which bounds what a flood makes us buffer.
        """
        sock, decoder, buffer = self._sock, self._decoder, self._buffer
        deadline = time.monotonic() + READ_SLICE
        emptied = False
        handle = decoder.buffered > 0  # nothing buffered (the usual call): read first
        while True:
            if handle:
                event = self._handle_batch()
                if event is _wire.CLOSED:
                    self._peer_closed()
                    return
                if self.state is _CLOSED:  # handling frames may have closed it
                    return
                if event is None:
                    self._resume_later()
                    return
                if emptied or time.monotonic() >= deadline:
                    return  # the read watcher calls again once there is more
            try:
                size, anc, flags, _ = sock.recvmsg_into((buffer,), _ANC_SIZE, _platform.RECV_FLAGS)
            except BlockingIOError:
                return
            except OSError as exc:
                raise ChannelClosedError(f"the IPC channel broke: {exc}") from exc
            fds = _platform.fds_from_ancillary(anc) if anc else ()
            if size or fds:
                decoder.receive_data(self._view[:size], fds, bool(flags & _CTRUNC))
            else:
                decoder.receive_eof()
            handle = True
            # A short read without fds emptied the socket: handle it, then
            # wait for more rather than pay for a read that would say EAGAIN.
            emptied = size < READ_SIZE and not anc

    def _resume_later(self) -> None:
        """Stop reading until the loop is idle; then handle what is buffered."""
        self._read_watcher.stop()
        self._resume.start(self._resume_reading)

    def _resume_reading(self) -> None:
        self._resume.stop()  # (a closing channel stops both watchers itself)
        self._read_watcher.start(self._on_readable)
        self._on_readable()

    def _handle_batch(self) -> Optional[_wire.NoFrame]:
        """Handle up to ``READ_BATCH`` whole frames.

        Returns:
            ``NEED_DATA`` when no whole frame is left, ``CLOSED`` once the
            peer closed, or None when frames remain after this batch (or
            the channel was closed while one was handled: a write that
            failed, say).

        Raises:
            ProtocolError: a malformed frame, or one in another codec.
        """
        done: List[_Call] = []
        codec = self._codec.ident
        frames, after = self._decoder.next_frames(READ_BATCH)
        taken = 0  # frames whose fds are in the hands of the code handling them
        try:
            for frame in frames:
                if self.state is _CLOSED:
                    return None
                taken += 1
                if frame.kind != _MESSAGE:
                    self._answered(frame, done)
                elif frame.codec == codec:
                    self._receive(frame)
                else:
                    self._wrong_codec(frame)
            return after
        finally:
            for left in frames[taken:]:  # out of the decoder, never handled: ours to close
                for fd in left.fds:
                    _platform.close_quietly(fd)
            self._finish(done)

    def _wrong_codec(self, frame: _wire.Frame) -> NoReturn:
        """A channel decodes only its own codec: anything else is a protocol error.

        Deciding by the frame's codec byte would let a peer on a JSON channel
        make us unpickle, which runs code of its choosing.
        """
        for fd in frame.fds:
            _platform.close_quietly(fd)
        raise ProtocolError(
            f"a frame in codec {describe(frame.codec)} arrived on a channel "
            f"that speaks {self._codec.name}",
            frame.payload,
        )

    def _receive(self, frame: _wire.Frame) -> None:
        # The common case, a plain message: no ident, so no fds either (the
        # decoder refuses fds without one), and no handle.
        if not frame.ident and not frame.handle:
            try:
                message = self._codec.loads(frame.payload)
            except ProtocolError as err:
                self._report(err)
                return
            self._owner.on_channel_message(message, None)
            return
        message, handle, answer = self._take(frame)
        if answer == _wire.ACK and frame.ident and self._owner.receiving:
            # Kept for recv(): acknowledged when recv() returns it.
            self._owner.on_channel_message(message, handle, frame.ident)
            return
        if frame.ident and answer:
            self._enqueue(_wire.encode_ack(frame.ident, answer), (), None)
        if answer == _wire.ACK:
            self._owner.on_channel_message(message, handle)

    def _take(self, frame: _wire.Frame) -> Tuple[Any, Optional[_handles.Handle], int]:
        """Decode a frame's message and rebuild its handle.

        Every fd of the frame that no handle took is closed here, and only
        here, whatever happens.

        Returns:
            ``(message, handle, answer)``: ``answer`` is ACK; NACK when the
            message or its handle could not be taken (then reported); 0 when
            we disconnected and can no longer acknowledge (its sender gets
            ChannelClosedError, keeps its handle, and may send it again).
        """
        fds = list(frame.fds)
        try:
            if self.state in _SHUTTING:
                return None, None, 0
            message, handle = self._rebuild(frame, fds)
        except (ProtocolError, ValueError, OSError) as exc:
            self._report(exc if isinstance(exc, ProtocolError) else ProtocolError(str(exc)))
            return None, None, _wire.NACK
        finally:
            for fd in fds:  # a frame may announce more fds than its handle needs
                _platform.close_quietly(fd)
        return message, handle, _wire.ACK

    def _rebuild(self, frame: _wire.Frame, fds: List[int]) -> Tuple[Any, Optional[_handles.Handle]]:
        """Decode a frame's message and rebuild its handle; ``(message, handle)``.

        The handle's fd leaves ``fds`` only once the handle owns it: whatever
        is left in ``fds`` is the caller's to close.
        """
        if frame.fds_lost:
            raise ProtocolError("the kernel dropped the handle's fds (MSG_CTRUNC)")
        payload, peer = _handles.split_peer(frame.handle, frame.flags, frame.payload)
        message = self._codec.loads(payload)
        if not frame.handle:
            return message, None
        if not fds:
            raise ProtocolError("a handle arrived without its fd", frame.payload)
        on_done = None
        if _handles.tracked(frame.handle, frame.flags):
            self._holding.add(frame.ident)
            on_done = partial(self._send_done, frame.ident)
        try:
            handle = _handles.from_wire(frame.handle, frame.flags, fds[0], on_done, peer)
        except BaseException:
            self._holding.discard(frame.ident)
            raise
        del fds[0]
        return message, handle

    def acknowledge(self, ident: int) -> bool:
        """ACK message ``ident``, which the owner kept for ``recv()``.

        Returns:
            False when it can no longer be (the channel is not open any
            more): its sender has been told it failed and keeps the handle,
            so the caller must drop the message and close its handle.
        """
        if self.state is not State.OPEN:
            return False
        self._enqueue(_wire.encode_ack(ident, _wire.ACK), (), None)
        return True

    def _send_done(self, ident: int) -> None:
        """A handle the sender asked to hear about is done with: say so.

        Deferred to the loop: a socket may be done inside a garbage
        collection, which can run in the middle of our own queue handling.
        """
        self._loop.run_callback(self._done, ident)

    def _done(self, ident: int) -> None:
        if ident not in self._holding:
            return
        self._holding.discard(ident)
        if self.state is not State.CLOSED:
            self._enqueue(_wire.encode_ack(ident, _wire.DONE), (), None)

    def _answered(self, frame: _wire.Frame, done: List[_Call]) -> None:
        if frame.kind == _wire.DONE:
            on_done = self._tracked.pop(frame.ident, None)
            if on_done is None:
                self._report(ProtocolError(f"DONE for unknown message {frame.ident}"))
            else:
                done.append((_without_err(on_done), None))
            return
        pending = self._settle(frame.ident)
        if pending is None:
            self._report(ProtocolError(f"answer to unknown message {frame.ident}"))
            return
        if frame.kind == _wire.ACK:
            if pending.outgoing is not None:
                pending.outgoing.release(pending.keep_open)
            if pending.on_done is not None:
                self._tracked[frame.ident] = pending.on_done
            if pending.callback is not None:
                done.append((pending.callback, None))
        else:
            lost = HandleLostError(
                "the receiver lost the handle on the way (MSG_CTRUNC: its fd table was "
                "full); it is still yours, untouched"
            )
            self._lost(pending, lost, done)

    def _lost(self, pending: _Pending, err: BaseException, done: List[_Call]) -> None:
        """A message did not reach the peer: its handle is ours again; say so once.

        With a callback, the handle is the caller's to send again. Without
        one, nobody will: a socket is ended gracefully (its client gets EOF)
        and the failure reported.
        """
        if pending.outgoing is not None:
            pending.outgoing.returned()
            if pending.callback is None:
                # Ending a socket runs its own listeners ('finish'), which may
                # wait: with the callbacks, never here (this may be the hub).
                done.append((_without_err(pending.outgoing.abandon), None))
        done.append((pending.callback, err))

    # -- closing and reporting ------------------------------------------

    def _shut_down(self, err: Optional[BaseException]) -> None:
        """Close the socket; fail what is queued and unacknowledged."""
        if self.state is State.CLOSED:
            return
        self._to(State.CLOSED)
        flushed: List[_Call] = []
        if err is None and self._queue:
            try:  # the peer closed its end: its reads may still be open
                self._write_some(flushed)
            except OSError:
                pass
        self._read_watcher.stop()
        self._resume.stop()
        self._write_watcher.stop()
        self._decoder.close()
        self._sock.close()
        closed = err or ChannelClosedError("the IPC channel is closed")
        failed = flushed + [(item[2], closed) for item in self._queue if item[2] is not None]
        for pending in self._awaiting.values():
            self._lost(pending, closed, failed)
        self._queue.clear()
        self._awaiting.clear()
        self._handles_awaiting = 0
        self._tracked.clear()  # their receiver is gone: their sender decides alone
        self._holding.clear()
        self._queued_bytes = 0
        self._finish(failed)

    def _peer_closed(self) -> None:
        """The peer closed its end cleanly: close, or first finish what we hold."""
        if not self._holding:
            self._shut_down(None)
            return
        self._to(State.FINISHING)
        self._read_watcher.stop()
        failed: List[_Call] = []
        closed = ChannelClosedError("the IPC channel was closed by the other end")
        for ident in list(self._awaiting):  # it can no longer acknowledge them
            pending = self._settle(ident)
            if pending is not None:
                self._lost(pending, closed, failed)
        self._finish(failed)
        self._schedule_flush()

    def _to(self, state: State) -> None:
        """Move to ``state``; the owner hears ``'disconnect'`` once, as it leaves the living."""
        before, self.state = self.state, state
        self._apply_ref()
        if before not in _GONE and state in _GONE:
            submit(self._owner.on_channel_closed)

    def _report(self, err: BaseException) -> None:
        """Emit ``'error'`` on the owner, in a greenlet of its own (not in the hub)."""
        submit(self._owner.on_channel_error, err)

    def _finish(self, calls: List[_Call]) -> None:
        """Run send callbacks, ``(callback, err)``, in a greenlet of their own."""
        if calls:
            submit(self._run_callbacks, calls)

    def _run_callbacks(self, calls: List[_Call]) -> None:
        for callback, err in calls:
            try:
                if callback is not None:
                    callback(err)
                elif err is not None:
                    self._owner.on_channel_error(err)
            except Exception:
                get_hub().handle_error(callback or self, *sys.exc_info())

    # -- keeping the process alive --------------------------------------

    def on_owner_listening(self, listening: bool) -> None:
        """Hook: the owner (``process``) calls this when it gained its first, or
        lost its last, keep-alive listener (``'message'``, ``'disconnect'``)."""
        self._refs = 1 if listening else 0
        self._apply_ref()

    def _apply_ref(self) -> None:
        if self._explicit_ref is not None:
            alive = self._explicit_ref
        else:
            alive = self._default_ref or self._refs > 0
        # Only reading follows ref()/unref(): the write watcher, active only
        # while writes are pending, stays referenced, as in Node (whose
        # process.send() refs the channel until the write completes), so a
        # child that sends and returns does not exit with the message queued.
        self._read_watcher.ref = self._resume.ref = alive and self.connected
