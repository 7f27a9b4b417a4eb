"""``ChannelOwner``: what ``ChildProcess`` and ``process`` share, an optional ``Channel``.

One rule for both ends' ``send()``: a caller's mistake (a ``callback`` that is not
callable, ``options`` that are not a mapping) is a ``TypeError``, and a send
on a channel already known to be closed is a ``ChannelClosedError``, raised
at once, before anything is queued. A channel that closes after ``send()``
returned reports through the callback, or ``'error'``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, Deque, Iterator, List, Optional, Tuple

from gevent import get_hub, getcurrent
from gevent.hub import Waiter

from . import _handles
from ._channel import Callback, Channel
from .errors import ChannelClosedError
from .events import EventEmitter

__all__ = ["ChannelOwner", "check_send_arguments", "is_internal"]

#: A message that is a dict whose ``cmd`` starts with this is the library's own
#: (a pool's commands to its workers): it is emitted as ``'internalMessage'``,
#: never as ``'message'``, as Node does for ``cmd: "NODE_..."``.
INTERNAL_PREFIX = "GEVENTFORK_"

log = logging.getLogger("geventfork")


def is_internal(message: Any) -> bool:
    """Whether ``message`` is one of the library's own (see ``INTERNAL_PREFIX``)."""
    if type(message) is not dict:
        return False
    cmd = message.get("cmd")
    return isinstance(cmd, str) and cmd.startswith(INTERNAL_PREFIX)


def check_send_arguments(options: object, callback: object) -> None:
    """Raise ``TypeError`` unless ``options`` and ``callback`` are what ``send()`` takes.

    Raises:
        TypeError: ``options`` is neither None nor a mapping, or ``callback``
            is neither None nor callable.
    """
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(
            f"send() options must be a mapping such as {{'keep_open': True}}, "
            f"not {type(options).__name__}"
        )
    if callback is not None and not callable(callback):
        raise TypeError(f"send() callback must be callable or None, not {type(callback).__name__}")


#: A message kept for ``recv()``: ``(message, handle, ident)``; a non-zero
#: ``ident`` is acknowledged when ``recv()`` returns it.
_Kept = Tuple[Any, Optional[_handles.Handle], int]


class ChannelOwner(EventEmitter):
    """What ``ChildProcess`` and ``process`` share: an optional ``Channel``,
    whose ``send()`` checks its arguments and the channel first, and
    ``recv()``, for code that would rather wait for a message than listen."""

    def __init__(self) -> None:
        super().__init__()
        #: The IPC channel, or None when there is none.
        self.channel: Optional[Channel] = None
        self._disconnect_called = False
        #: Set by a subclass once nothing may be sent whatever the channel's
        #: state (``ChildProcess``: the child exited); ``_closed_reason`` says why.
        self._ended = False
        self._inbox: Optional[Deque[_Kept]] = None  # made by the first recv()
        # recv() callers waiting for a message to be kept, or the channel to close.
        self._waiters: List[Waiter[None]] = []
        self._kept_alive = False  # whether the channel is kept alive for recv()
        self._release_scheduled = False
        self._channel_gone = False  # 'disconnect' was heard

    @property
    def connected(self) -> bool:
        """Whether ``send()`` can still send: False once it would raise ``ChannelClosedError``."""
        return self._closed_reason() is None

    def send(
        self,
        message: Any,
        handle: Optional[_handles.Handle] = None,
        options: Optional[Mapping[str, Any]] = None,
        callback: Optional[Callback] = None,
    ) -> bool:
        """Queue ``message``, and optionally a handle, for the other end.

        Like Node's ``subprocess.send()``, except that a send on a channel
        already known to be closed raises (Node emits ``'error'``, or throws
        for ``process.send`` with no channel). Never blocks the calling
        greenlet.

        Args:
            message: anything the channel's serialization can encode.
            handle: a ``net.Socket``, ``net.Server`` or socket to pass along.
            options: a mapping; ``{"keep_open": True}`` keeps our copy of a
                sent socket.
            callback: ``callback(err)``, called once: ``None`` when the
                message is handed to the kernel (with a handle: when the
                receiver acknowledged it), or the error, such as
                ``ChannelClosedError`` when the channel closed first.
                Without one, such an error is emitted as ``'error'``.

        Returns:
            False once the queue is past its high-water mark, True otherwise.

        Raises:
            TypeError: ``options`` is not a mapping, or ``callback`` is not
                callable.
            ChannelClosedError: the channel is already closed (the other end
                exited or disconnected, ``disconnect()`` was called, or there
                never was a channel); nothing was queued.
            InvalidHandleTypeError: ``handle`` is not a kind ``send`` accepts.
            SerializationError: ``message`` cannot be serialised.
        """
        if options is not None or callback is not None:
            check_send_arguments(options, callback)
        channel = self.channel
        # The checks a stream of sends pays for each message: the flag and the
        # channel's state; the reason is looked for only when one says no.
        if channel is None or self._ended or not channel.connected:
            reason = self._closed_reason()
            raise ChannelClosedError(f"cannot send: {reason or 'there is no IPC channel'}")
        return channel.send(message, handle, options, callback)

    def recv(self, timeout: Optional[float] = None) -> Tuple[Any, Optional[_handles.Handle]]:
        """Wait for the next message; return ``(message, handle)`` (``handle`` may be None).

        Blocks the calling greenlet only. Messages come in the order they
        were sent. A message with a handle is acknowledged when ``recv()``
        returns it (a ``'message'`` listener's is acknowledged on receipt),
        so a sender such as a ``Pool`` knows this process has taken it.

        Who gets a message: the ``'message'`` listeners when there are any,
        else ``recv()``. From the first ``recv()`` on, messages that arrive
        with no listener are kept for ``recv()``, in order, instead of being
        dropped (``process`` also keeps those that arrived while the
        script's top level ran). Not in Node, which has only the event.

        Args:
            timeout: seconds to wait at most; None waits as long as the
                channel is open.

        Raises:
            ChannelClosedError: the channel is closed (or there is none)
                and no message is left.
            TimeoutError: no message within ``timeout`` seconds.
        """
        inbox = self._open_inbox()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while inbox:
                message, handle, ident = inbox.popleft()
                if ident and not self._acknowledge(ident, handle):
                    continue
                return message, handle
            if self.channel is None or self._channel_gone or self._disconnect_called:
                reason = self._closed_reason() or "the IPC channel is closed"
                raise ChannelClosedError(f"no message: {reason}")
            self._wait(deadline, timeout)

    def messages(self) -> Iterator[Tuple[Any, Optional[_handles.Handle]]]:
        """``(message, handle)`` for each message, as ``recv()`` returns them,
        until the channel closes::

            for message, handle in process.messages():
                ...
        """
        while True:
            try:
                item = self.recv()
            except ChannelClosedError:
                return
            yield item

    @property
    def receiving(self) -> bool:
        """Hook: whether a message arriving now is kept for ``recv()`` (its ACK then waits)."""
        return self._inbox is not None and not self._listeners.get("message")

    def _open_inbox(self) -> Deque[_Kept]:
        if self._inbox is None:
            self._inbox = deque((message, handle, 0) for message, handle in self._held_messages())
        return self._inbox

    def _held_messages(self) -> List[Tuple[Any, Optional[_handles.Handle]]]:
        """Messages that arrived before the first ``recv()`` and still wait
        for someone (``process`` holds some): they go to ``recv()``."""
        return []

    def _wait(self, deadline: Optional[float], timeout: Optional[float]) -> None:
        """Wait until a message is kept or the channel closed; TimeoutError past ``deadline``."""
        hub = get_hub()
        waiter: Waiter[None] = Waiter(hub)
        self._waiters.append(waiter)
        timer = None
        if deadline is not None:
            timer = hub.loop.timer(max(0.0, deadline - time.monotonic()))
            timer.start(waiter.throw, TimeoutError(f"no message within {timeout} s"))
        if not self._kept_alive:
            self._kept_alive = True
            self._listeners_changed("message")  # a waiting recv() keeps the process alive
        try:
            waiter.get()
        finally:
            if timer is not None:
                timer.close()
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            if not self._waiters and not self._release_scheduled:
                # Let go on the loop's next turn, unless a recv() waits again
                # by then, as one in a loop does: no change per message.
                self._release_scheduled = True
                get_hub().loop.run_callback(self._release)

    def on_channel_read(self) -> None:
        """Hook: the channel handled what it read for now (in the hub): wake
        the ``recv()`` callers waiting if messages were kept for them, once
        for the whole read rather than once a message."""
        if self._waiters and self._inbox:
            self._wake()

    def _wake(self) -> None:
        """Wake the ``recv()`` callers waiting: at once from the hub (the
        channel's reader runs there), else on the loop's next turn."""
        waiters, self._waiters = self._waiters, []
        hub = get_hub()
        for waiter in waiters:
            if getcurrent() is hub:
                waiter.switch(None)
            else:
                hub.loop.run_callback(waiter.switch, None)

    def _release(self) -> None:
        """No recv() waits any more: the channel no longer keeps the process alive for it."""
        self._release_scheduled = False
        if not self._waiters and self._kept_alive:
            self._kept_alive = False
            self._listeners_changed("message")

    @property
    def waiting_in_recv(self) -> bool:
        """Whether the channel is kept alive for a ``recv()`` waiting, or that
        just waited (a subclass's ``_listeners_changed`` counts it)."""
        return self._kept_alive

    def _acknowledge(self, ident: int, handle: Optional[_handles.Handle]) -> bool:
        """ACK a kept message; False (its handle closed) when the channel can no
        longer: its sender then keeps the handle and may send it elsewhere."""
        if self.channel is not None and self.channel.acknowledge(ident):
            return True
        if handle is not None:
            _handles.close(handle)
        return False

    def disconnect(self) -> None:
        """Flush queued messages, then close the channel; both ends get ``'disconnect'``."""
        if self.channel is not None and self.channel.connected:
            self._disconnect_called = True
            self.channel.disconnect()

    def _closed_reason(self) -> Optional[str]:
        """Why nothing can be sent any more, or None while something can.

        Subclasses say more (never started, exited); this covers the channel.
        """
        if self.channel is None:
            return "there is no IPC channel"
        if not self.channel.connected:
            if self._disconnect_called:
                return "the IPC channel is closed (disconnect() was called)"
            return "the IPC channel is closed"
        return None

    def on_channel_message(
        self, message: Any, handle: Optional[_handles.Handle], ident: int = 0
    ) -> None:
        """Hook: the channel calls this when a message (and its handle, or None) arrived.

        The library's own messages (``is_internal``) are ``'internalMessage'``.
        A non-zero ``ident`` (asked for by ``receiving``) is acknowledged
        here, or by the ``recv()`` that takes the message.
        """
        # Most messages are not dicts, or dicts without "cmd": no call for those.
        internal = type(message) is dict and "cmd" in message and is_internal(message)
        if self._inbox is not None and not internal and not self._listeners.get("message"):
            self._inbox.append((message, handle, ident))
            return
        if ident and not self._acknowledge(ident, handle):
            return
        event = "internalMessage" if internal else "message"
        if not self.emit(event, message, handle) and handle is not None:
            _handles.close(handle)  # nobody will take it: never leak it

    def on_channel_error(self, err: BaseException) -> None:
        """Hook: the channel calls this with a failure no send callback takes:
        ``'error'`` if anyone listens, else a log line.

        Unlike Node, which throws an ``'error'`` nobody listens for: the
        failure is the peer's or the channel's, not a bug of the caller's,
        so it gets one warning line on the ``geventfork`` logger, not a
        traceback through the library.
        """
        if self.listener_count("error"):
            self.emit("error", err)
        else:
            log.warning("%r: %s (%s; no 'error' listener)", self, err, type(err).__name__)

    def on_channel_closed(self) -> None:
        """Hook: the channel calls this once, when it closes: ``'disconnect'``.

        Kept messages not yet acknowledged are dropped, their handles closed
        (their senders were told they failed); ``recv()`` returns the
        others, then raises.
        """
        if self._inbox:
            for _message, handle, ident in self._inbox:
                if ident and handle is not None:
                    _handles.close(handle)
            self._inbox = deque(item for item in self._inbox if not item[2])
        self._channel_gone = True
        self._wake()
        self.emit("disconnect")
