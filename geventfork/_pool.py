"""``Pool``: a fixed number of forked workers that loses no connection.

A dead worker is restarted, with back-off, and what it had not begun on goes
to another worker. On Linux the pool keeps its own copy of each TCP
``net.Socket`` it sends until the worker says it is done with the connection
(the channel's ``on_done``); when a worker dies first, the kernel's byte
counts say whether it had begun: a connection it had not is sent to another
worker, one it had is ended gracefully by the pool. Nothing polls.

The workers run through ``_worker``, which tells the pool when the script
is ready or retires.
"""

from __future__ import annotations

import logging
import os
import signal as _signal
import sys
import time
from collections import deque
from typing import (
    IO,
    Any,
    Deque,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
    cast,
)

import gevent
from gevent.event import Event

from ._dispatch import submit
from . import _handles, _worker
from ._channel import Callback, Channel
from ._owner import check_send_arguments
from ._server import Server
from ._stream import Socket
from .child_process import ChildProcess, fork, resolve_module
from .errors import ChannelClosedError, ProtocolError, WorkerStartupError
from .events import EventEmitter

__all__ = ["Pool"]

log = logging.getLogger("geventfork")

#: Seconds before a dead worker's first restart; doubled for each quick death.
RESTART_DELAY = 0.1
#: The longest wait between restarts, in seconds.
MAX_RESTART_DELAY = 3.0
#: A worker that stayed up this many seconds resets its slot's back-off, and
#: counts as ready even if nothing else said so.
STABLE_AFTER = 5.0
#: Workers that exit before they are ready, in a row over the whole pool,
#: that make it report a crash loop and fail sends until one is ready.
CRASH_LOOP = 5
#: Lines of a worker's stderr kept for the crash-loop report.
STDERR_LINES = 20
#: The longest stderr line read at once, in bytes.
STDERR_LINE_SIZE = 64 * 1024
#: Seconds the crash-loop report waits for the rest of a dead worker's stderr.
STDERR_GRACE = 1.0
#: The workers' stdio when the caller chose none: stderr is piped, copied to
#: ours line by line, and its last lines kept for the crash-loop report.
STDIO = ("inherit", "inherit", "pipe")
#: Default seconds a worker gets to finish its connections once its channel
#: has closed (``close()``, or the parent died), before it is ended.
SHUTDOWN_TIMEOUT = 10.0
#: Seconds ``close()`` waits for workers it killed with SIGKILL.
KILL_TIMEOUT = 5.0
#: The longest time between two heartbeat pings, in seconds (a quarter of
#: ``heartbeat`` when that is shorter).
HEARTBEAT_EVERY = 1.0

STRATEGIES = ("round_robin", "least_busy")


class _Job:
    """One ``Pool.send()``, until it is delivered for good or fails."""

    __slots__ = (
        "message",
        "handle",
        "options",
        "callback",
        "baseline",
        "worker",
        "reported",
        "done",
        "refused_by",
        "lost",
    )

    def __init__(
        self,
        message: Any,
        handle: Optional[_handles.Handle],
        options: Optional[Mapping[str, Any]],
        callback: Optional[Callback],
    ) -> None:
        self.message = message
        self.handle = handle
        self.options = options
        self.callback = callback
        #: ``Socket.tcp_progress()`` when first sent, for a connection the
        #: pool keeps a copy of ("tracked"); None otherwise.
        self.baseline: Optional[Tuple[bool, int, int]] = None
        self.worker: Optional[_Worker] = None  # the worker it is with now
        self.reported = False
        self.done = False  # the worker said it is done with the connection
        self.refused_by: Set[Optional[int]] = set()  # pids of workers that lost its fd (NACK)
        self.lost: Optional[BaseException] = None  # the last NACK's error

    @property
    def connection(self) -> Socket:
        """The handle of a tracked job (``baseline`` set): always a ``net.Socket``."""
        # Cast: only a net.Socket gets a baseline (_tracked_baseline).
        return cast(Socket, self.handle)

    def untouched(self) -> bool:
        """Whether no worker has read, written or shut the connection down."""
        return self.connection.tcp_progress() == self.baseline


class _Worker:
    """A worker and what the pool has sent it."""

    __slots__ = (
        "child",
        "slot",
        "started",
        "ready",
        "retiring",
        "released",
        "pong",
        "exited",
        "sending",
        "serving",
        "stderr",
        "reader",
        "timer",
    )

    def __init__(self, child: ChildProcess, slot: int) -> None:
        self.child = child
        self.slot = slot
        self.started = time.monotonic()
        self.ready = False  # its script got going (see Pool._ready)
        self.retiring = False  # it retires: it gets no new sends
        self.released = False  # its slot has another worker: its exit respawns nothing
        self.pong = 0.0  # time.monotonic() of its last heartbeat answer (or of ready)
        self.exited = False
        self.sending: Set[_Job] = set()  # jobs sent, not yet acknowledged or failed
        self.serving: Set[_Job] = set()  # tracked jobs it has, or had when it died
        self.stderr: Deque[str] = deque(maxlen=STDERR_LINES)
        self.reader: Optional[gevent.Greenlet[..., None]] = None  # copies its stderr
        self.timer: Any = None  # makes it ready after STABLE_AFTER s

    @property
    def load(self) -> int:
        return len(self.sending) + len(self.serving)

    def channel_open(self) -> bool:
        """Whether its channel takes sends (cheaper than ``child.connected``,
        which also says why not: this runs for every worker on every send)."""
        channel = self.child.channel
        return channel is not None and channel.connected


def _tracked_baseline(
    handle: Optional[_handles.Handle], options: Optional[Mapping[str, Any]]
) -> Optional[Tuple[bool, int, int]]:
    """The byte counts of a TCP ``net.Socket`` the pool will keep a copy of, else None.

    Not when the caller keeps its own copy (``keep_open``), nor where the
    kernel does not say (not Linux, not TCP), nor for a connection shut down.
    """
    if not isinstance(handle, Socket) or (options and options.get("keep_open")):
        return None
    progress = handle.tcp_baseline()
    if progress is None or progress[0]:
        return None
    return progress


class Pool(EventEmitter):
    """``size`` workers forked from ``module``, restarted when they die.

    Events: ``'spawn'(worker)``, ``'message'(worker, message, handle)``,
    ``'exit'(worker, code, signal)``, ``'timeout'(worker)`` (it missed the
    heartbeat and is killed next), ``'error'(err)``, ``'close'``. Each
    ``worker`` is the ``ChildProcess``. An ``'error'`` with no listener is
    logged as one warning line on the ``geventfork`` logger.

    Args:
        module: the worker script (a path or dotted module name), as for
            ``fork()``.
        size: how many workers to keep running.
        args: the workers' arguments (``process.argv[2:]``).
        strategy: ``"round_robin"``, or ``"least_busy"``: the worker with
            the fewest sends not yet acknowledged and connections it serves.
        shutdown_timeout: seconds a worker gets to finish its connections
            once its channel closes (``close()``, or the parent died).
        heartbeat: seconds a ready worker may go without answering the
            pool's ping (sent from its event loop, so a worker stuck in a
            call that never yields misses it) before it is killed with
            SIGKILL and replaced; ``'timeout'(worker)`` comes first. 0 or
            None: no heartbeat.
        **options: ``fork()``'s options. Unless ``silent`` or ``stdio`` is
            given, the workers' stderr is piped through the pool, which
            copies it to ours and keeps its last lines for the crash-loop
            ``'error'``.

    Raises:
        ValueError: an unknown strategy, or a size below 1.
        FileNotFoundError: ``module`` names a file that does not exist.
    """

    def __init__(
        self,
        module: Union[str, os.PathLike[str]],
        size: int,
        args: Sequence[Any] = (),
        *,
        strategy: str = "round_robin",
        shutdown_timeout: float = SHUTDOWN_TIMEOUT,
        heartbeat: Optional[float] = None,
        **options: Any,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
        if size < 1:
            raise ValueError(f"a pool needs at least one worker, not {size}")
        if heartbeat is not None and heartbeat < 0:
            raise ValueError(f"heartbeat must be 0 or more seconds, not {heartbeat}")
        super().__init__()
        self.module = resolve_module(module, options.get("cwd"))  # FileNotFoundError now
        self.args = list(args)
        self.size = size
        self.strategy = strategy
        self.shutdown_timeout = shutdown_timeout
        self._tail_stderr = "silent" not in options and "stdio" not in options
        self._options = {**options, "stdio": STDIO} if self._tail_stderr else options
        self._live: List[_Worker] = []  # not gone yet, in slot order
        self._failures = [0] * size  # quick deaths in a row, per slot
        self._restarts: Dict[int, gevent.Greenlet[..., None]] = {}  # slot -> its respawn
        self._queue: Deque[_Job] = deque()  # while no worker is connected
        self._jobs: Dict[int, _Job] = {}  # id(handle) -> job, for the handles in our care
        self._turn = 0
        self._unready_exits = 0  # workers that died before they were ready, in a row
        self._failed: Optional[WorkerStartupError] = None  # set during a crash loop
        self._closing = False
        self._closed = False
        self._all_gone = Event()
        #: slot -> the worker a reload replaces there, until its replacement is ready
        self._outgoing: Dict[int, _Worker] = {}
        self._forking = 0  # fork() calls under way (close() waits for them)
        #: Whether a worker has got going (is or was ready) since the pool was made.
        self.started = False
        self.heartbeat = heartbeat or 0.0
        self._pinger: Any = None
        if self.heartbeat:
            every = min(HEARTBEAT_EVERY, self.heartbeat / 4)
            self._pinger = gevent.get_hub().loop.timer(every, every, ref=False)
            self._pinger.start(submit, self._ping)  # not in the hub: listeners may block
        for slot in range(size):
            self._spawn(slot, announce=False)
        for worker in self._live:  # now, so that a listener added next sees them all
            self._announce(worker.child)

    @property
    def workers(self) -> List[ChildProcess]:
        """The workers running now (``ChildProcess``), in slot order."""
        return [worker.child for worker in self._live if not worker.exited]

    def send(
        self,
        message: Any,
        handle: Optional[_handles.Handle] = None,
        options: Optional[Mapping[str, Any]] = None,
        callback: Optional[Callback] = None,
    ) -> bool:
        """Send ``message`` (and a handle) to a live worker; see ``ChildProcess.send``.

        ``callback(err)`` is called once: ``None`` when a worker acknowledged
        it, or the error. If the worker dies first, the message goes to
        another; so does a connection the worker had not begun on, and one
        whose fd the worker lost (NACK). With no worker connected, it waits
        for one. A send that fails with no callback ends its ``net.Socket``
        gracefully (the client gets EOF) and is reported once, as ``'error'``.

        Returns:
            False when it waits for a worker or the worker's queue is past
            its high-water mark, True otherwise.

        Raises:
            InvalidHandleTypeError: ``handle`` is not a kind ``send`` accepts.
            ValueError: ``handle`` is being sent already.
            SerializationError: ``message`` cannot be serialised (raised
                when a worker is connected, else passed to the callback).
        """
        check_send_arguments(options, callback)
        if handle is not None:
            _handles.check(handle)
            if id(handle) in self._jobs:
                raise ValueError("this handle is being sent already")
        job = _Job(message, handle, options, callback)
        job.baseline = _tracked_baseline(handle, options)
        if handle is not None:
            self._jobs[id(handle)] = job
        try:
            return self._assign(job)
        except BaseException:
            self._jobs.pop(id(handle), None)
            raise

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
            self._outgoing.clear()  # every worker is disconnected below
            if self._pinger is not None:
                self._pinger.stop()
            for restart in self._restarts.values():
                restart.kill(block=False)
            self._restarts.clear()
            while self._queue:
                self._give_up_on(self._queue.popleft(), ChannelClosedError("the pool is closed"))
            for worker in self._live:
                worker.child.disconnect()
            self._maybe_all_gone()
        wait = self.shutdown_timeout if timeout is None else timeout
        if not self._all_gone.wait(wait):
            for worker in list(self._live):
                worker.child.kill(_signal.SIGKILL)
            self._all_gone.wait(KILL_TIMEOUT)
        if not self._closed:
            self._closed = True
            self.emit("close")

    def reload(self) -> None:
        """Replace every worker: a new one starts now in each slot, and the
        old one retires as soon as its replacement is ready.

        Until then the old worker takes sends as before, so nothing waits for
        the new one to start; a replacement that never gets ready leaves the
        old worker serving. A retiring worker finishes what it has and
        exits: by default its channel is disconnected (as by ``close()``); a
        worker script may take this over (``_worker.on_retire``). A crash
        loop is forgotten: the new workers get a fresh start.
        """
        if self._closing:
            return
        self._unready_exits = 0
        self._failed = None
        old = [worker for worker in self._live if not worker.released]
        for slot, restart in list(self._restarts.items()):
            restart.kill(block=False)
            self._failures[slot] = 0
            self._spawn(slot)
        for worker in old:
            worker.released = True  # its slot is its replacement's
            if worker.ready and worker.slot not in self._outgoing:
                self._outgoing[worker.slot] = worker
            else:  # not serving yet, or an older one is waiting to go: now
                self._retire(worker)
            self._failures[worker.slot] = 0
            self._spawn(worker.slot)

    def resize(self, size: int) -> None:
        """Run ``size`` workers from now on: new ones start at once, or the
        workers in the surplus slots retire (as in ``reload()``).

        Raises:
            ValueError: ``size`` is below 1.
        """
        if size < 1:
            raise ValueError(f"a pool needs at least one worker, not {size}")
        if self._closing or size == self.size:
            return
        old, self.size = self.size, size
        if size > old:
            self._failures.extend([0] * (size - old))
            for slot in range(old, size):
                self._spawn(slot)
            return
        del self._failures[size:]
        for slot in [slot for slot in self._restarts if slot >= size]:
            self._restarts.pop(slot).kill(block=False)
        for slot in [slot for slot in self._outgoing if slot >= size]:
            self._retire(self._outgoing.pop(slot))
        for worker in [w for w in self._live if w.slot >= size and not w.released]:
            self._retire(worker)

    def __repr__(self) -> str:
        return f"<Pool {self.module!r} size={self.size} workers={[w.pid for w in self.workers]}>"

    # -- workers ----------------------------------------------------------

    def _spawn(self, slot: int, announce: bool = True) -> None:
        self._restarts.pop(slot, None)
        if self._closing or slot >= self.size:
            return
        args = [self.shutdown_timeout, self.module, *self.args]
        self._forking += 1
        try:
            child = fork(_worker.__name__, args, **self._options)
        except BaseException:
            self._forking -= 1
            self._maybe_all_gone()
            raise
        self._forking -= 1  # and no yield until it is in _live
        worker = _Worker(child, slot)
        child.on("message", lambda message, handle: self._forward(worker, message, handle))
        child.on("internalMessage", lambda message, handle: self._internal(worker, message))
        child.on("exit", lambda code, signal: self._exited(worker, code, signal))
        child.on("close", lambda code, signal: self._gone(worker))
        child.on("error", lambda err: self._worker_error(worker, err))
        if self._tail_stderr and child.stderr is not None:
            worker.reader = gevent.spawn(_copy_stderr, child.stderr, worker.stderr)
        worker.timer = gevent.get_hub().loop.timer(STABLE_AFTER, ref=False)
        worker.timer.start(self._ready, worker)
        self._live.append(worker)
        self._live.sort(key=lambda w: w.slot)
        if self._closing:  # close() ran while fork() waited: this one goes too
            child.disconnect()
            return
        if announce:
            self._announce(child)
        self._send_waiting()

    def _announce(self, child: ChildProcess) -> None:
        if child.pid is not None:
            submit(self.emit, "spawn", child)

    def _internal(self, worker: _Worker, message: Mapping[str, Any]) -> None:
        """A message of ``_worker``'s: ready, retiring, or a heartbeat's answer."""
        if message.get("cmd") != _worker.CMD:
            return
        state = message.get("state")
        if state == "pong":
            worker.pong = time.monotonic()
            return
        self._ready(worker)
        if state == "retiring":
            worker.retiring = True  # from now on: no new sends
            submit(self._start_successor, worker)  # in a greenlet of its own: fork() waits

    def _start_successor(self, worker: _Worker) -> None:
        """``worker`` retires: start its replacement now, unless its slot is gone."""
        if not worker.released:
            worker.released = True
            if worker.slot < self.size:
                self._failures[worker.slot] = 0
                self._spawn(worker.slot)

    def _retire(self, worker: _Worker) -> None:
        """Ask ``worker`` to retire; its slot, if any, is someone else's now."""
        worker.retiring = True
        worker.released = True
        if worker.channel_open():
            worker.child.send(_worker.RETIRE, callback=_ignore)

    def _ping(self) -> None:
        """The heartbeat: kill ready workers that have not answered for
        ``heartbeat`` s; ping the others."""
        now = time.monotonic()
        for worker in list(self._live):
            if not worker.ready or worker.exited or not worker.channel_open():
                continue  # a worker that disconnected cannot answer: not judged
            if now - worker.pong > self.heartbeat:
                worker.pong = float("inf")  # killed once
                self.emit("timeout", worker.child)
                worker.child.kill(_signal.SIGKILL)
            elif worker.channel_open():
                worker.child.send(_worker.PING, callback=_ignore)

    def _forward(self, worker: _Worker, message: Any, handle: Optional[_handles.Handle]) -> None:
        if self.listener_count("message"):
            self.emit("message", worker.child, message, handle)
        elif handle is not None:
            _handles.close(handle)  # nobody will take it: never leak it

    def _ready(self, worker: _Worker) -> None:
        """``worker`` got going: its script's top level returned, or it stayed
        up ``STABLE_AFTER`` s (a top level that serves and never returns).

        Not its ACKs: a channel acknowledges on receipt, while the script's
        top level may still be on its way to failing.
        """
        if worker.ready or worker.exited:
            return
        worker.ready = True
        self.started = True
        worker.pong = time.monotonic()
        worker.timer.stop()
        self._unready_exits = 0
        self._failed = None
        outgoing = self._outgoing.get(worker.slot)
        if outgoing is not None and not worker.released:
            del self._outgoing[worker.slot]
            self._retire(outgoing)

    def _worker_error(self, worker: _Worker, err: BaseException) -> None:
        if worker.child.pid is None and worker in self._live:  # it never started
            worker.exited = True
            self._gone(worker)
        self.emit("error", err)

    def _exited(self, worker: _Worker, code: Optional[int], signal: Optional[str]) -> None:
        """The process is gone; what it held is judged once its channel closed too."""
        worker.exited = True
        worker.timer.stop()
        self.emit("exit", worker.child, code, signal)

    def _gone(self, worker: _Worker) -> None:
        """Exited, channel closed, every answer in: recover what it held; replace it."""
        if worker not in self._live:
            return
        worker.exited = True
        worker.timer.stop()
        self._live.remove(worker)
        if self._outgoing.get(worker.slot) is worker:
            del self._outgoing[worker.slot]
        if worker.retiring:
            self._start_successor(worker)  # unless replaced already, or its slot is gone
        # Every send to it was answered (ACK, NACK or ChannelClosedError)
        # before its channel closed; a job left here is judged the same way.
        left = list(worker.serving) + list(worker.sending)
        worker.serving.clear()
        worker.sending.clear()
        for job in left:
            if job.worker is worker:
                job.worker = None
                self._recover(job)
        self._replace(worker)
        self._maybe_all_gone()

    def _replace(self, worker: _Worker) -> None:
        """Respawn ``worker``'s slot with back-off, unless it retired (replaced at once)."""
        if self._closing or worker.released or worker.slot >= self.size:
            return
        slot = worker.slot
        if not worker.ready:
            self._unready_exits += 1
            if self._unready_exits == CRASH_LOOP:
                submit(self._crash_loop, worker)
        if time.monotonic() - worker.started >= STABLE_AFTER:
            self._failures[slot] = 0
        delay = min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** self._failures[slot])
        self._failures[slot] = min(self._failures[slot] + 1, 32)
        self._restarts[slot] = gevent.spawn_later(delay, self._spawn, slot)

    def _crash_loop(self, worker: _Worker) -> None:
        """Report workers that never get going; fail sends until one does."""
        if worker.reader is not None:
            worker.reader.join(STDERR_GRACE)  # its last words
        if self._unready_exits < CRASH_LOOP or self._closing:
            return  # a worker got going meanwhile
        child = worker.child
        err = WorkerStartupError(
            child.exit_code, child.signal_code, "".join(worker.stderr), CRASH_LOOP
        )
        self._failed = err
        while self._queue:
            self._give_up_on(self._queue.popleft(), err, report=False)
        self.emit("error", err)

    def _maybe_all_gone(self) -> None:
        if self._closing and not self._live and not self._forking:
            self._all_gone.set()

    def _unhandled_error(self, err: object) -> None:
        """An ``'error'`` nobody listens for: one warning line, no traceback."""
        line = getattr(err, "summary", None) or str(err).partition("\n")[0]
        log.warning("Pool %s: %s: %s", self.module, type(err).__name__, line)

    # -- sending ----------------------------------------------------------

    def _connected(self) -> List[_Worker]:
        """The workers a send may go to: connected, neither exited nor retiring;
        during a reload, not a new worker until it is ready (the one it
        replaces serves meanwhile)."""
        workers = [
            worker
            for worker in self._live
            if not worker.retiring and not worker.exited and worker.channel_open()
        ]
        if self._outgoing:
            workers = [w for w in workers if w.ready or w.slot not in self._outgoing]
        return workers

    def _pick(self, workers: List[_Worker]) -> _Worker:
        self._turn = (self._turn + 1) % len(workers)
        ordered = workers[self._turn :] + workers[: self._turn]
        if self.strategy == "least_busy":
            return min(ordered, key=lambda worker: worker.load)
        return ordered[0]

    def _assign(self, job: _Job) -> bool:
        """Send ``job`` to a worker now, or queue it; may raise as ``send`` does."""
        if self._closing:
            self._give_up_on(job, ChannelClosedError("the pool is closed"))
            return False
        workers = self._connected()
        if not workers:
            if self._failed is not None:  # a crash loop: no worker will take it soon
                self._give_up_on(job, self._failed, report=False)
            else:
                self._queue.append(job)
            return False
        if job.refused_by:
            workers = [w for w in workers if w.child.pid not in job.refused_by]
            if not workers:  # every worker lost its fd: it will not fit anywhere now
                # Cast: every pid in refused_by came with a NACK, which set lost.
                self._give_up_on(job, cast(BaseException, job.lost))
                return False
        worker = self._pick(workers)
        options = job.options
        extra: Dict[str, Any] = {}
        if job.baseline is not None:
            options = {**(options or {}), "keep_open": True}
            extra["on_done"] = lambda: self._done(worker, job)
        elif job.handle is None:
            extra["acknowledge"] = True
        job.worker = worker
        worker.sending.add(job)
        try:
            # Cast: _connected() returned workers whose channel is open.
            return cast(Channel, worker.child.channel).send(
                job.message,
                job.handle,
                options,
                lambda err: self._answered(worker, job, err),
                **extra,
            )
        except BaseException:
            worker.sending.discard(job)
            job.worker = None
            raise

    def _reassign(self, job: _Job) -> None:
        try:
            self._assign(job)
        except Exception as exc:
            self._give_up_on(job, exc)

    def _send_waiting(self) -> None:
        while self._queue and self._connected():
            self._reassign(self._queue.popleft())

    def _answered(self, worker: _Worker, job: _Job, err: Optional[BaseException]) -> None:
        """The channel's callback: the worker acknowledged, refused, or was gone."""
        worker.sending.discard(job)
        if job.worker is not worker:
            return  # judged already, with its worker's death
        if err is None:
            self._report(job, None)
            if job.baseline is not None and not job.done:
                worker.serving.add(job)  # until it is done with it, or dies
            else:
                job.worker = None
                self._settled(job)
        elif isinstance(err, ChannelClosedError) and job.baseline is not None:
            worker.serving.add(job)  # judged by its bytes once the worker is gone
        elif isinstance(err, (ChannelClosedError, ProtocolError)):
            job.worker = None
            if isinstance(err, ProtocolError):  # NACK: the worker lost the fd
                job.refused_by.add(worker.child.pid)
                job.lost = err
            self._retry(job, err)
        else:  # e.g. an OSError from sendmsg: this message cannot be sent
            job.worker = None
            self._give_up_on(job, err)

    def _done(self, worker: _Worker, job: _Job) -> None:
        """``on_done``: the worker is done with the connection; close our copy."""
        if job.worker is not worker or job.done:
            return
        job.done = True
        worker.serving.discard(job)
        if job not in worker.sending:  # else its ACK, still to come, settles it
            job.worker = None
            self._settled(job)
        job.connection.destroy()  # on_done is asked for tracked jobs only

    def _recover(self, job: _Job) -> None:
        """A tracked connection's worker died: re-send it if untouched, else end it.

        Judged once the worker is gone: a dead process cannot change the
        kernel's byte counts any more.
        """
        if job.baseline is not None:
            job.connection.on_handoff_returned()  # no longer shared with the dead worker
        if job.baseline is None or job.untouched():
            self._retry(job, ChannelClosedError("the worker died before it began on it"))
        else:
            self._report(job, None)  # a worker began on it: it was delivered
            self._settled(job)
            job.connection.end()  # FIN after what the worker wrote; the client's bytes drained

    def _retry(self, job: _Job, err: BaseException) -> None:
        """Send ``job`` to another worker, unless the pool cannot any more."""
        if self._closing:
            self._give_up_on(job, ChannelClosedError("the pool is closed"))
        else:
            self._reassign(job)

    # -- reporting --------------------------------------------------------

    def _report(self, job: _Job, err: Optional[BaseException]) -> None:
        if not job.reported:
            job.reported = True
            if job.callback is not None:
                submit(job.callback, err)

    def _settled(self, job: _Job) -> None:
        """``job`` is out of the pool's care: its handle may be sent again."""
        if job.handle is not None and self._jobs.get(id(job.handle)) is job:
            del self._jobs[id(job.handle)]

    def _give_up_on(self, job: _Job, err: BaseException, report: bool = True) -> None:
        """``job`` will not be sent: the callback gets ``err``, or the socket is ended.

        Without a callback the failure is reported once, as ``'error'``,
        unless ``report`` is False (the error was emitted already) or the
        pool is closing.
        """
        self._settled(job)
        if job.callback is not None and not job.reported:
            self._report(job, err)
            return
        if job.handle is not None:
            _let_go(job.handle)
        if report and not self._closing:
            submit(self.emit, "error", err)


def _ignore(err: Optional[BaseException]) -> None:
    """The callback of the pool's own messages: a worker gone meanwhile is no news."""


def _let_go(handle: _handles.Handle) -> None:
    """Let go of a handle nobody will serve: end a ``net.Socket`` gracefully
    (EOF, not RST), close a plain socket, leave a ``net.Server`` listening
    (as Node keeps a sent server open in the sender)."""
    if isinstance(handle, Socket):
        handle.end()
    elif not isinstance(handle, Server):
        _handles.close(handle)


def _copy_stderr(pipe: IO[bytes], tail: Deque[str]) -> None:
    """Copy a worker's stderr to ours, line by line, keeping the last lines in ``tail``."""
    try:
        while True:
            line = pipe.readline(STDERR_LINE_SIZE)
            if not line:
                return
            text = line.decode("utf-8", "replace")
            tail.append(text)
            sys.stderr.write(text)
            sys.stderr.flush()
    except (OSError, ValueError):  # closed under us
        pass
    finally:
        pipe.close()
