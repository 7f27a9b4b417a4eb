"""The child's end: ``geventfork.process``, like Node's ``process`` object."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, List, Optional, Tuple

from . import _handles
from ._channel import Channel
from ._environ import CHANNEL_FD_ENV, MAX_MESSAGE_SIZE_ENV, MAX_QUEUED_ENV, SERIALIZATION_ENV
from ._owner import ChannelOwner, is_internal
from ._serialization import by_name

__all__ = ["Process", "process"]


class Process(ChannelOwner):
    """This process, as its parent sees it through ``fork()``.

    Events: ``'message'(message, handle)``, ``'disconnect'``, ``'error'``;
    the library's own messages (a dict whose ``cmd`` starts with
    ``GEVENTFORK_``) are ``'internalMessage'``, as Node's ``NODE_`` ones are.
    As in Node, the channel keeps the process alive only while something
    listens for ``'message'`` or ``'disconnect'``, or after
    ``process.channel.ref()``.
    """

    def __init__(self) -> None:
        super().__init__()
        #: Node-style: ``[sys.executable, SCRIPT, *ARGS]``.
        self.argv: List[str] = [sys.executable, *sys.argv]
        self.pid = os.getpid()
        # (message, handle) pairs; None once the top level returned
        self._held: Optional[List[Tuple[Any, Optional[_handles.Handle]]]] = []
        #: Called in order, with no arguments, by ``on_top_level_done()``,
        #: once held messages were let go (a pool's worker says it is ready).
        self.top_level_done_callbacks: List[Callable[[], object]] = []
        #: Called in order, with no arguments, first thing in ``disconnect()``
        #: (a pool's worker tells the pool it disconnects on purpose).
        self.disconnect_callbacks: List[Callable[[], object]] = []

    def _closed_reason(self) -> Optional[str]:
        if self.channel is None:
            return "this process has no IPC channel: it was not started by fork()"
        if not self.channel.connected and not self._disconnect_called:
            return "the IPC channel to the parent is closed"
        return super()._closed_reason()

    def connect_channel(self, script: str, args: List[str]) -> None:
        """Hook: the runner calls this before it runs ``script``; take the
        channel the parent passed, if any.

        The variables that name it leave the environment and the fd is made
        close-on-exec, so that nothing this process starts (``os.system``,
        ``subprocess``) holds the channel open after this process exits, or
        takes it for its own (Node deletes ``NODE_CHANNEL_FD`` likewise).
        """
        self.argv = [sys.executable, script, *args]
        fd = os.environ.pop(CHANNEL_FD_ENV, None)
        codec = by_name(os.environ.pop(SERIALIZATION_ENV, "json"))
        max_size = os.environ.pop(MAX_MESSAGE_SIZE_ENV, None)
        max_queued = os.environ.pop(MAX_QUEUED_ENV, None)
        if fd is None:
            return
        import _socket  # the raw socket: the channel does its own cooperative waits

        options = {"max_size": int(max_size)} if max_size else {}
        if max_queued:
            options["max_queued"] = int(max_queued)
        try:
            os.set_inheritable(int(fd), False)
            sock = _socket.socket(fileno=int(fd))
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"geventfork: no IPC channel: {CHANNEL_FD_ENV}={fd}: {exc}\n")
            return
        self.channel = Channel(sock, self, codec, ref=False, **options)
        self._listeners_changed("message")

    def on_top_level_done(self) -> None:
        """Hook: ``run()`` calls this once the script's top level returned.

        Messages no listener took are dropped (their handles closed), and
        from now on nothing is held; then ``top_level_done_callbacks`` run.
        """
        held, self._held = self._held, None
        for _message, handle in held or ():
            if handle is not None:
                _handles.close(handle)
        for callback in tuple(self.top_level_done_callbacks):
            callback()

    def disconnect(self) -> None:
        """Flush queued messages, then close the channel; both ends get ``'disconnect'``.

        ``disconnect_callbacks`` run first, whether or not a channel is open.
        """
        for callback in tuple(self.disconnect_callbacks):
            callback()
        super().disconnect()

    def on_channel_message(
        self, message: Any, handle: Optional[_handles.Handle], ident: int = 0
    ) -> None:
        """Hook (see ``ChannelOwner``): held until the top level returned if
        nobody listens yet and ``recv()`` was never called."""
        if (
            self._held is not None
            and self._inbox is None
            and not self._listeners.get("message")
            and not is_internal(message)
        ):
            self._held.append((message, handle))  # Node holds these too
        else:
            super().on_channel_message(message, handle, ident)

    def _held_messages(self) -> List[Tuple[Any, Optional[_handles.Handle]]]:
        held = self._held or []
        if self._held is not None:
            self._held = []
        return held

    def _listeners_changed(self, event: str) -> None:
        if event not in ("message", "disconnect") or self.channel is None:
            return
        self.channel.on_owner_listening(
            self.listener_count("message") + self.listener_count("disconnect") > 0
            or self.waiting_in_recv
        )
        if event == "message" and self._held and self.listener_count("message"):
            held, self._held = self._held, []
            for message, handle in held:
                self.emit("message", message, handle)


#: This process.
process = Process()
