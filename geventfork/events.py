"""``EventEmitter``: Node's event API, with blocking-friendly dispatch."""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional, TypeVar, overload

from ._dispatch import submit_listener
from .errors import GeventforkError

__all__ = ["EventEmitter"]

Listener = Callable[..., object]
_L = TypeVar("_L", bound=Listener)
log = logging.getLogger("geventfork")


class EventEmitter:
    """Node's ``EventEmitter``, snake_cased.

    Listeners of the events named in ``_spawned_events`` (``'message'``,
    ``'internalMessage'`` and ``'connection'``) each run in a greenlet of their own, started in
    arrival order, so a listener that blocks cooperatively never holds up
    the channel or the accept loop (the greenlets are reused, as threads in
    a pool are: see ``_dispatch``). Every other event calls its listeners in
    order, in the emitting greenlet.

    An ``'error'`` emitted with no listener raises it, as in Node.

    A spawned listener that raises is passed to ``on_listener_failed``: by
    default it ends each ``net.Socket`` among the event's arguments that is
    still this process's own, so a connection whose handler failed is closed
    gracefully at once instead of waiting for the garbage collector. The
    hub then prints the traceback, except for a ``GeventforkError``, which
    is one warning line on the ``geventfork`` logger.
    """

    _spawned_events: frozenset[str] = frozenset(("message", "internalMessage", "connection"))

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {}

    @overload
    def on(self, event: str, fn: _L) -> _L: ...

    @overload
    def on(self, event: str, fn: None = None) -> Callable[[_L], _L]: ...

    def on(self, event: str, fn: Optional[Listener] = None) -> object:
        """Call ``fn`` on every ``event``; without ``fn``, return a decorator."""
        if fn is None:
            return lambda f: self.on(event, f)
        self._listeners.setdefault(event, []).append(fn)
        self._listeners_changed(event)
        return fn

    add_listener = on

    @overload
    def once(self, event: str, fn: _L) -> _L: ...

    @overload
    def once(self, event: str, fn: None = None) -> Callable[[_L], _L]: ...

    def once(self, event: str, fn: Optional[Listener] = None) -> object:
        """Call ``fn`` on the next ``event`` only; without ``fn``, a decorator."""
        if fn is None:
            return lambda f: self.once(event, f)

        def wrapper(*args: Any) -> object:
            self.off(event, wrapper)
            return fn(*args)

        wrapper.listener = fn  # type: ignore[attr-defined]
        self.on(event, wrapper)
        return fn

    def off(self, event: str, fn: Listener) -> None:
        """Remove the most recently added ``fn`` (or ``once`` wrapper of it)."""
        listeners = self._listeners.get(event, [])
        for i in range(len(listeners) - 1, -1, -1):
            item = listeners[i]
            if item is fn or getattr(item, "listener", None) is fn:
                del listeners[i]
                self._listeners_changed(event)
                return

    remove_listener = off

    def remove_all_listeners(self, event: Optional[str] = None) -> None:
        """Remove every listener of ``event``, or of every event."""
        events = [event] if event is not None else list(self._listeners)
        for name in events:
            if self._listeners.pop(name, None):
                self._listeners_changed(name)

    def listener_count(self, event: str) -> int:
        """How many listeners ``event`` has."""
        return len(self._listeners.get(event, ()))

    def listeners(self, event: str) -> list[Listener]:
        """A copy of the listeners of ``event``."""
        return list(self._listeners.get(event, ()))

    def emit(self, event: str, *args: Any) -> bool:
        """Call the listeners of ``event``; return whether there were any.

        Raises:
            The ``'error'`` argument itself, when ``'error'`` has no listener.
        """
        listeners = self._listeners.get(event)
        if not listeners:
            if event == "error":
                self._unhandled_error(args[0] if args else None)
            return False
        if event in self._spawned_events:
            snapshot = tuple(listeners)
            for fn in snapshot:
                if hasattr(fn, "listener"):
                    # A once() wrapper removes itself only when its greenlet
                    # runs; remove it now, as Node does at emit time, or a
                    # second emit before then would run it (and count it) again.
                    self.off(event, fn)
            submit_listener(self, event, snapshot, args)
        else:
            for fn in tuple(listeners):
                fn(*args)
        return True

    def _unhandled_error(self, err: object) -> None:
        """Raise an ``'error'`` nobody listens for (Node throws it too)."""
        if isinstance(err, BaseException):
            raise err
        raise RuntimeError(f"Unhandled 'error' event ({err!r})")

    def _listeners_changed(self, event: str) -> None:
        """Hook: ``event`` gained or lost a listener."""

    def on_listener_failed(
        self, event: str, listener: Listener, args: tuple[Any, ...], exc: BaseException
    ) -> bool:
        """Hook: the dispatcher calls this when ``listener`` (of a spawned ``event``) raised.

        Runs in the listener's greenlet. The default ends every argument
        that can be abandoned (a ``net.Socket`` not sent on nor destroyed:
        see ``Socket.on_abandoned``), so that no connection is left without
        an owner, unless ``event`` has other listeners, which may still be
        using it (the garbage collector then ends what nobody keeps). A
        ``GeventforkError`` (the channel closed under a send, a handle
        ``send`` refused, ...) is then logged as one warning line naming the
        listener's line, since its traceback would show only the library's
        internals; any other exception is left to the hub, which prints its
        traceback.

        Args:
            event: the event, e.g. ``'connection'`` or ``'message'``.
            listener: the listener that raised.
            args: the arguments it was called with.
            exc: what it raised.

        Returns:
            Whether ``exc`` was reported here (else the hub reports it).
        """
        if self.listener_count(event) <= 1:  # no other listener may still use it
            for arg in args:
                # Only emitters of ours (a net.Socket); looked up on the type, so
                # neither a user's message object nor its __getattr__ is called.
                if isinstance(arg, EventEmitter):
                    abandoned = getattr(type(arg), "on_abandoned", None)
                    if abandoned is not None:
                        abandoned(arg)
        if not isinstance(exc, GeventforkError):
            return False
        log.warning(
            "%r listener %s failed: %s: %s", event, _where(listener, exc), type(exc).__name__, exc
        )
        return True


def _where(listener: Listener, exc: BaseException) -> str:
    """``name (file:line)``: the listener and the last line of user code ``exc`` passed."""
    listener = getattr(listener, "listener", listener)  # a once() wrapper's function
    name = getattr(listener, "__qualname__", None) or repr(listener)
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    place = None
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not os.path.abspath(filename).startswith(package):
            place = f"{os.path.basename(filename)}:{tb.tb_lineno}"
        tb = tb.tb_next
    return f"{name} ({place})" if place else name
