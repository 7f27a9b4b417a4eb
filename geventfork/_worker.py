"""The entry point of a ``Pool``'s workers: ``python -m geventfork geventfork._worker``.

It runs the user's worker script as the runner does, and speaks for the
worker to the pool, in internal messages the script never sees:

- worker → pool: READY once the script's top level has returned; RETIRING
  when the worker retires (``retire()``, or the script disconnects on
  purpose); PONG for each PING.
- pool → worker: PING (the heartbeat: answered from the event loop, so a
  worker stuck in a call that never yields misses it); RETIRE (the pool
  replaces this worker: ``on_retire``'s callback runs, by default
  ``process.disconnect()``).

It also bounds how long the worker outlives its channel.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Callable, List, Optional

if TYPE_CHECKING:  # pragma: no cover
    from gevent._types import _TimerWatcher

    from ._process import Process

__all__ = ["CMD", "READY", "RETIRING", "PING", "PONG", "RETIRE", "main", "retire", "on_retire"]

#: Messages between the pool and this entry point carry this ``cmd``: they
#: are ``'internalMessage'`` on both ends, never ``'message'`` (Node's
#: cluster reserves ``cmd: "NODE_..."`` alike).
CMD = "GEVENTFORK_POOL"
READY = {"cmd": CMD, "state": "ready"}
RETIRING = {"cmd": CMD, "state": "retiring"}
PONG = {"cmd": CMD, "state": "pong"}
PING = {"cmd": CMD, "state": "ping"}
RETIRE = {"cmd": CMD, "state": "retire"}

_deadline: Optional[_TimerWatcher] = None
_retired = False
_on_retire: Optional[Callable[[], object]] = None


def main(argv: List[str]) -> None:
    """Run the user's worker script; end it ``grace`` s after its channel closes.

    Args:
        argv: ``[grace, script, *args]``.
    """
    from ._main import run_script
    from ._process import process

    grace, script, *args = argv
    process.on("disconnect", lambda: _exit_after(float(grace)))
    process.on("internalMessage", _from_the_pool)
    _tell_the_pool(process)
    sys.exit(run_script(script, args))


def retire() -> None:
    """Tell the pool that this worker retires: it sends nothing new here and
    starts a replacement at once.

    The channel stays open, so the worker can still send (hand connections
    back) until it calls ``process.disconnect()``. Once is enough; later
    calls do nothing.
    """
    from ._process import process

    global _retired
    if not _retired and process.connected:
        _retired = True
        process.send(RETIRING)


def on_retire(callback: Optional[Callable[[], object]]) -> None:
    """Have ``callback()`` run when the pool retires this worker (a reload, or
    fewer workers), instead of the default ``process.disconnect()``.

    It runs in a greenlet of its own; the worker should call
    ``process.disconnect()`` once it has finished (None: the default again).
    """
    global _on_retire
    _on_retire = callback


def _from_the_pool(message: Any, handle: Any) -> None:
    from ._dispatch import submit
    from ._process import process

    state = message.get("state")
    if state == "ping":
        if process.connected:
            process.send(PONG)
    elif state == "retire":
        global _retired
        _retired = True  # the pool knows: no RETIRING needed
        submit(_on_retire or process.disconnect)


def _tell_the_pool(process: Process) -> None:
    """Send ``READY`` once the script's top level returned, ``RETIRING`` before
    the script disconnects on purpose (``process.disconnect()``)."""

    def ready() -> None:
        if process.connected:
            process.send(READY)

    process.top_level_done_callbacks.append(ready)
    process.disconnect_callbacks.append(retire)


def _exit_after(grace: float) -> None:
    """Without a channel, finish what is under way, but for ``grace`` s at most."""
    import gevent

    global _deadline
    _deadline = gevent.get_hub().loop.timer(grace, ref=False)
    _deadline.start(_exit_now)


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


if __name__ == "__main__":
    # Run as ``__main__``, this file is a second copy of the module: the
    # module itself keeps the state that worker scripts reach through
    # ``retire()`` and ``on_retire()``.
    from geventfork import _worker

    _worker.main(sys.argv[1:])
