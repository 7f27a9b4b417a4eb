"""The entry point of a ``Pool``'s workers: ``python -m geventfork geventfork._worker``.

It runs the user's worker script as the runner does, tells the pool when the
script's top level has returned (READY) and when the script disconnects on
purpose (RETIRING), and bounds how long the worker outlives its channel.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, List, Optional

if TYPE_CHECKING:  # pragma: no cover
    from gevent._types import _TimerWatcher

    from ._process import Process

__all__ = ["CMD", "READY", "RETIRING", "main"]

#: Messages between the pool and this entry point carry this ``cmd``; the pool
#: keeps them out of its ``'message'`` events (Node's cluster reserves
#: ``cmd: "NODE_..."`` alike).
CMD = "GEVENTFORK_POOL"
READY = {"cmd": CMD, "state": "ready"}
RETIRING = {"cmd": CMD, "state": "retiring"}

_deadline: Optional[_TimerWatcher] = None


def main(argv: List[str]) -> None:
    """Run the user's worker script; end it ``grace`` s after its channel closes.

    Args:
        argv: ``[grace, script, *args]``.
    """
    from ._main import run_script
    from ._process import process

    grace, script, *args = argv
    process.on("disconnect", lambda: _exit_after(float(grace)))
    _tell_the_pool(process)
    sys.exit(run_script(script, args))


def _tell_the_pool(process: Process) -> None:
    """Send ``READY`` once the script's top level returned, ``RETIRING`` before
    the script disconnects on purpose (``process.disconnect()``)."""

    def ready() -> None:
        if process.connected:
            process.send(READY)

    def retire() -> None:
        if process.connected:
            process.send(RETIRING)

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
    main(sys.argv[1:])
