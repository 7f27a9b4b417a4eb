"""``Pool``: a fixed number of forked workers that loses no connection.

A dead worker is restarted, with back-off, and what it had not begun on goes
to another worker. On Linux the pool keeps its own copy of each ``net.Socket``
it sends until the kernel's byte counts show the worker began on it, so even
one acknowledged just before the worker died is re-sent.

Run as a module, this file is the workers' entry point: it runs the user's
script and bounds how long a worker outlives its channel.
"""
from __future__ import annotations

import os
import signal as _signal
import sys
import time
from collections import deque
from typing import Any, Callable, Optional, Sequence

import gevent
from gevent.event import Event

from . import _handles, _platform
from ._stream import Socket
from .child_process import ChildProcess, fork, resolve_module
from .errors import ChannelClosedError
from .events import EventEmitter

__all__ = ["Pool"]

#: Seconds before a dead worker's first restart; doubled for each quick death.
RESTART_DELAY = 0.1
#: The longest wait between restarts, in seconds.
MAX_RESTART_DELAY = 3.0
#: A worker that stayed up this many seconds resets its slot's back-off.
STABLE_AFTER = 5.0
#: Seconds between checks of the connections the pool holds a copy of. Each
#: check costs three syscalls per held connection; the copies (one fd each)
#: live until the next check after their worker began on them.
SWEEP_INTERVAL = 0.05
#: Default seconds a worker gets to finish its connections once its channel
#: has closed (``close()``, or the parent died), before it is ended.
SHUTDOWN_TIMEOUT = 10.0
#: Seconds ``close()`` waits for workers it killed with SIGKILL.
KILL_TIMEOUT = 5.0

STRATEGIES = ("round_robin", "least_busy")


def _let_go(handle: Any) -> None:
    """Close a handle nobody will serve: a ``net.Socket`` gracefully."""
    if isinstance(handle, Socket):
        handle.end()
    else:
        _handles.close(handle)


class _Job:
    """One ``Pool.send()``, until a worker has it for good."""

    __slots__ = ("message", "handle", "options", "callback", "baseline", "reported")

    def __init__(self, message: Any, handle: Any, options: Optional[dict], callback: Any) -> None:
        self.message = message
        self.handle = handle
        self.options = options
        self.callback = callback
        #: ``_platform.tcp_progress()`` when first sent, if the pool keeps its own copy.
        self.baseline: Optional[tuple] = None
        self.reported = False

    def untouched(self) -> bool:
        """Whether no worker has read, written or shut the connection down."""
        return _platform.tcp_progress(self.handle._raw_socket) == self.baseline


class _Worker:
    """A worker and what the pool has sent it."""

    __slots__ = ("child", "slot", "started", "sending", "held", "exited")

    def __init__(self, child: ChildProcess, slot: int) -> None:
        self.child = child
        self.slot = slot
        self.started = time.monotonic()
        self.sending = 0  # sends not yet acknowledged
        self.held: set = set()  # acknowledged, not yet begun on; the pool has a copy
        self.exited = False

    @property
    def load(self) -> int:
        return self.sending + len(self.held)


class Pool(EventEmitter):
    """``size`` workers forked from ``module``, restarted when they die.

    Events: ``'spawn'(worker)``, ``'message'(worker, message, handle)``,
    ``'exit'(worker, code, signal)``, ``'error'(err)``, ``'close'``. Each
    ``worker`` is the ``ChildProcess``.

    Args:
        module: the worker script (a path or dotted module name), as for
            ``fork()``.
        size: how many workers to keep running.
        args: the workers' arguments (``process.argv[2:]``).
        strategy: ``"round_robin"``, or ``"least_busy"``: the worker with
            the fewest sends not yet acknowledged or connections not yet
            begun on.
        shutdown_timeout: seconds a worker gets to finish its connections
            once its channel closes (``close()``, or the parent died).
        **options: ``fork()``'s options.

    Raises:
        ValueError: an unknown strategy, or a size below 1.
        FileNotFoundError: ``module`` names a file that does not exist.
    """

    def __init__(
        self,
        module: Any,
        size: int,
        args: Sequence[Any] = (),
        *,
        strategy: str = "round_robin",
        shutdown_timeout: float = SHUTDOWN_TIMEOUT,
        **options: Any,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
        if size < 1:
            raise ValueError(f"a pool needs at least one worker, not {size}")
        super().__init__()
        self.module = resolve_module(module, options.get("cwd"))  # FileNotFoundError now
        self.args = list(args)
        self.size = size
        self.strategy = strategy
        self.shutdown_timeout = shutdown_timeout
        self._options = options
        self._live: list = []  # _Worker, in slot order
        self._failures = [0] * size  # quick deaths in a row, per slot
        self._restarts: dict = {}  # slot -> the greenlet that will respawn it
        self._queue: deque = deque()  # _Job, while no worker is connected
        self._turn = 0
        self._closing = False
        self._closed = False
        self._all_exited = Event()
        self._sweeper = gevent.get_hub().loop.timer(SWEEP_INTERVAL, SWEEP_INTERVAL, ref=False)
        for slot in range(size):
            self._spawn(slot, announce=False)
        for worker in self._live:  # now, so that a listener added next sees them all
            self._announce(worker.child)

    @property
    def workers(self) -> list:
        """The workers running now (``ChildProcess``), in slot order."""
        return [worker.child for worker in self._live]

    def send(
        self,
        message: Any,
        handle: Any = None,
        options: Optional[dict] = None,
        callback: Optional[Callable] = None,
    ) -> bool:
        """Send ``message`` (and a handle) to a live worker; see ``ChildProcess.send``.

        If the worker dies first, the message goes to another; so does a
        ``net.Socket`` its worker had not begun on (judged by the kernel's
        byte counts, on Linux; elsewhere, and with ``keep_open``, only one
        it had not acknowledged). With no worker connected, it waits for
        one. ``callback(err)`` is called once: ``None`` when a worker first
        acknowledged it, or the error; without a callback, an error is
        emitted as ``'error'`` and the handle closed.

        Returns:
            False when it waits for a worker or the worker's queue is past
            its high-water mark, True otherwise.

        Raises:
            InvalidHandleTypeError: ``handle`` is not a kind ``send`` accepts.
            SerializationError: ``message`` cannot be serialised (raised
                when a worker is connected, else passed to the callback).
        """
        if handle is not None:
            _handles.check(handle)
        job = _Job(message, handle, options, callback)
        if isinstance(handle, Socket) and not (options and options.get("keep_open")):
            progress = _platform.tcp_progress(handle._raw_socket)
            if progress is not None and not progress[0]:
                job.baseline = progress
        return self._dispatch(job)

    def close(self, timeout: Optional[float] = None) -> None:
        """Stop; let each worker finish its connections and exit; wait for them.

        Blocks the calling greenlet. Messages waiting for a worker fail with
        ``ChannelClosedError``; every worker's channel is disconnected (after
        what is queued on it), so each worker serves what it has and exits.
        Workers still running after ``timeout`` seconds (default
        ``shutdown_timeout``) are killed with SIGKILL. ``'close'`` follows.
        Like Node's ``cluster.disconnect()``, except that it blocks, and for
        ``timeout`` seconds at most.
        """
        if not self._closing:
            self._closing = True
            for restart in self._restarts.values():
                restart.kill(block=False)
            self._restarts.clear()
            while self._queue:
                self._fail(self._queue.popleft(), ChannelClosedError("the pool is closed"))
            for worker in self._live:
                worker.child.disconnect()
            self._maybe_all_exited()
        wait = self.shutdown_timeout if timeout is None else timeout
        if not self._all_exited.wait(wait):
            for worker in list(self._live):
                worker.child.kill(_signal.SIGKILL)
            self._all_exited.wait(KILL_TIMEOUT)
        self._sweeper.stop()
        if not self._closed:
            self._closed = True
            self.emit("close")

    def __repr__(self) -> str:
        pids = [worker.child.pid for worker in self._live]
        return f"<Pool {self.module!r} size={self.size} workers={pids}>"

    # -- workers ----------------------------------------------------------

    def _spawn(self, slot: int, announce: bool = True) -> None:
        self._restarts.pop(slot, None)
        if self._closing:
            return
        args = [self.shutdown_timeout, self.module, *self.args]
        child = fork(__name__, args, **self._options)
        worker = _Worker(child, slot)
        child.on("message", lambda message, handle: self._forward(child, message, handle))
        child.on("exit", lambda code, signal: self._exited(worker, code, signal))
        child.on("error", lambda err: self._worker_error(worker, err))
        self._live.append(worker)
        self._live.sort(key=lambda w: w.slot)
        if announce:
            self._announce(child)
        self._drain()

    def _announce(self, child: ChildProcess) -> None:
        if child.pid is not None:
            gevent.spawn(self.emit, "spawn", child)

    def _forward(self, child: ChildProcess, message: Any, handle: Any) -> None:
        if self.listener_count("message"):
            self.emit("message", child, message, handle)
        elif handle is not None:
            _handles.close(handle)  # nobody will take it: never leak it

    def _worker_error(self, worker: _Worker, err: BaseException) -> None:
        if worker.child.pid is None:  # it never started: no 'exit' will come
            self._gone(worker)
        self.emit("error", err)

    def _exited(self, worker: _Worker, code: Optional[int], signal: Optional[str]) -> None:
        self._gone(worker)
        self.emit("exit", worker.child, code, signal)

    def _gone(self, worker: _Worker) -> None:
        """The worker is dead: recover what it held, schedule its restart."""
        worker.exited = True
        self._live.remove(worker)
        held, worker.held = worker.held, set()
        for job in held:
            self._recover(job)
        self._schedule_restart(worker)
        self._maybe_all_exited()

    def _schedule_restart(self, worker: _Worker) -> None:
        if self._closing:
            return
        slot = worker.slot
        if time.monotonic() - worker.started >= STABLE_AFTER:
            self._failures[slot] = 0
        delay = min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** self._failures[slot])
        self._failures[slot] = min(self._failures[slot] + 1, 32)
        self._restarts[slot] = gevent.spawn_later(delay, self._spawn, slot)

    def _maybe_all_exited(self) -> None:
        if self._closing and not self._live:
            self._all_exited.set()

    # -- sending ----------------------------------------------------------

    def _pick(self) -> Optional[_Worker]:
        connected = [worker for worker in self._live if worker.child.connected]
        if not connected:
            return None
        self._turn = (self._turn + 1) % len(connected)
        ordered = connected[self._turn:] + connected[: self._turn]
        if self.strategy == "least_busy":
            return min(ordered, key=lambda worker: worker.load)
        return ordered[0]

    def _dispatch(self, job: _Job) -> bool:
        """Send ``job`` to a worker now, or queue it; may raise as ``send`` does."""
        if self._closing:
            self._fail(job, ChannelClosedError("the pool is closed"))
            return False
        worker = self._pick()
        if worker is None:
            self._queue.append(job)
            return False
        options = job.options
        if job.baseline is not None:
            options = {**(options or {}), "keep_open": True}
        worker.sending += 1
        try:
            return worker.child.send(
                job.message, job.handle, options, lambda err: self._sent(worker, job, err)
            )
        except BaseException:
            worker.sending -= 1
            raise

    def _redispatch(self, job: _Job) -> None:
        try:
            self._dispatch(job)
        except Exception as exc:
            self._fail(job, exc)

    def _drain(self) -> None:
        while self._queue and any(worker.child.connected for worker in self._live):
            self._redispatch(self._queue.popleft())

    def _sent(self, worker: _Worker, job: _Job, err: Optional[BaseException]) -> None:
        """``child.send``'s callback: acknowledged, or the channel closed first."""
        worker.sending -= 1
        if err is None:
            self._report(job, None)
            if job.baseline is not None:
                self._hold(worker, job)
        elif not isinstance(err, ChannelClosedError):
            self._fail(job, err)
        elif job.baseline is not None:
            self._hold(worker, job)  # judged by its bytes once the worker is gone
        else:
            self._redispatch(job)

    def _hold(self, worker: _Worker, job: _Job) -> None:
        if worker.exited:
            self._recover(job)
            return
        worker.held.add(job)
        if not self._sweeper.active:
            self._sweeper.start(self._sweep)

    def _recover(self, job: _Job) -> None:
        """A held connection's worker died: re-send it if untouched, else end it."""
        if not job.untouched():
            self._report(job, None)  # a worker began on it: it was delivered
            _let_go(job.handle)
        elif self._closing:
            self._fail(job, ChannelClosedError("the pool is closed"))
        else:
            self._redispatch(job)

    def _sweep(self) -> None:
        """Close the copies of connections their worker has begun on (runs in the hub).

        A worker that has died keeps its copies until ``_gone``, which ends
        them gracefully: closing the last copy of a connection with unread
        bytes would reset it, even after the worker wrote its whole answer.
        """
        for worker in self._live:
            if not worker.held or not _platform.running(worker.child.pid):
                continue
            for job in [job for job in worker.held if not job.untouched()]:
                worker.held.discard(job)
                job.handle._release(False)
        if not any(worker.held for worker in self._live):
            self._sweeper.stop()

    # -- reporting --------------------------------------------------------

    def _report(self, job: _Job, err: Optional[BaseException]) -> None:
        if not job.reported:
            job.reported = True
            if job.callback is not None:
                gevent.spawn(job.callback, err)

    def _fail(self, job: _Job, err: BaseException) -> None:
        """``job`` will not be sent: the callback gets ``err``, or the handle is closed."""
        if job.callback is not None and not job.reported:
            self._report(job, err)
            return
        if job.handle is not None:
            _let_go(job.handle)
        if not self._closing:
            gevent.spawn(self.emit, "error", err)


# -- the worker's side ----------------------------------------------------

_deadline: Any = None


def _worker_main(argv: list) -> None:
    """Run the user's worker script; end it ``grace`` s after its channel closes."""
    from ._main import run_script
    from ._process import process

    grace, script, *args = argv
    process.on("disconnect", lambda: _exit_after(float(grace)))
    sys.exit(run_script(script, args))


def _exit_after(grace: float) -> None:
    """Without a channel, finish what is under way, but for ``grace`` s at most."""
    global _deadline
    _deadline = gevent.get_hub().loop.timer(grace, ref=False)
    _deadline.start(_give_up)


def _give_up() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
