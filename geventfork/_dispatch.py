"""Run listeners in order, each in a greenlet no other running listener shares.

``gevent.spawn`` per message costs about 20 us here, most of it in starting
and tearing down a fresh greenlet. A ``Dispatcher`` keeps a few greenlets
(runners) and lets the current runner call jobs back to back. A job that
blocks keeps its runner, and another runner takes on the jobs behind it:
one submitted while the runner is suspended in a job is proof enough, and
when jobs already wait behind a job, a callback checks on the next turn of
the hub. So jobs start in submission order and one that blocks never holds
up the rest, as with a greenlet per job.

Like threads in a pool, runners are reused: a job must not count on a fresh
``gevent.local`` or on the identity of ``gevent.getcurrent()``. A runner lets
go of a job's function and arguments as soon as the job returns, so an object
only the job held (a ``net.Socket`` a handler ignored) is freed at once.

A job submitted for an ``EventEmitter`` (``submit_listener``) that raises is
reported to the emitter's ``on_listener_failed`` hook, so the emitter can end
what the listener left behind; the hub then reports the error (with its
traceback) unless the hook did.
"""

from __future__ import annotations

import sys
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, List, Optional, Protocol, Tuple

from gevent import Greenlet, get_hub
from greenlet import GreenletExit, greenlet

if TYPE_CHECKING:  # pragma: no cover
    from gevent.hub import Hub

__all__ = ["submit", "submit_listener"]

#: Idle runners kept for reuse; more than this many at once are let go.
MAX_IDLE = 32


class FailureHook(Protocol):
    """What ``submit_listener`` reports a raising listener to (an ``EventEmitter``)."""

    def on_listener_failed(
        self, event: str, listener: Callable[..., object], args: Tuple[Any, ...], exc: BaseException
    ) -> bool: ...


#: A queued job: ``(fn, args, emitter, event)``.
_Job = Tuple[Callable[..., object], Tuple[Any, ...], Optional[FailureHook], str]


class Dispatcher:
    """The job queue and runners of one hub."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._jobs: Deque[_Job] = deque()
        self._idle: List[greenlet] = []
        self._runner: Optional[greenlet] = None  # the runner taking jobs off the queue
        self._in_job = False  # whether ``_runner`` is inside a job
        self._watching = False  # a ``_watch`` callback is pending

    def submit(
        self,
        fn: Callable[..., object],
        args: Tuple[Any, ...],
        emitter: Optional[FailureHook] = None,
        event: str = "",
    ) -> None:
        """Run ``fn(*args)`` soon, after the jobs submitted before it.

        Args:
            fn: the job.
            args: its arguments.
            emitter: if not None, told through ``emitter.on_listener_failed(event,
                fn, args, exc)`` when ``fn`` raises.
            event: the event ``fn`` listens to, for ``emitter``.
        """
        self._jobs.append((fn, args, emitter, event))
        if self._runner is None:
            self._start_runner()
        elif self._in_job:
            if Greenlet.getcurrent() is not self._runner:
                self._hand_over()  # we run, so the runner is suspended inside its job
            elif not self._watching:
                self._watch_soon()  # a job now waits behind the one running

    def _watch_soon(self) -> None:
        self._watching = True
        self._hub.loop.run_callback(self._watch)

    def _hand_over(self) -> None:
        """The runner is suspended inside a job: another takes the queue on."""
        self._in_job = False
        self._runner = None
        if self._jobs:
            self._start_runner()

    def _start_runner(self) -> None:
        if self._idle:
            runner = self._idle.pop()
            self._hub.loop.run_callback(runner.switch)
        else:
            runner = Greenlet(self._run)
            runner.start()
        self._runner = runner

    def _watch(self) -> None:
        """Hand the queue on if the runner is suspended inside a job (runs in the hub)."""
        self._watching = False
        if self._in_job:
            self._hand_over()

    def _run(self) -> None:
        """A runner: take jobs while it is the runner, then park, until let go."""
        me = Greenlet.getcurrent()
        try:
            while True:
                self._run_jobs(me)
                if self._runner is me:
                    self._runner = None
                if len(self._idle) >= MAX_IDLE:
                    return
                self._park(me)
        finally:
            self._retire(me)

    def _run_jobs(self, me: greenlet) -> None:
        """Run queued jobs back to back while ``me`` is the runner.

        Returns holding nothing of the last job: what only it referenced (an
        ignored ``net.Socket``) is freed while the runner is parked.
        """
        jobs = self._jobs
        while jobs and self._runner is me:
            fn, args, emitter, event = jobs.popleft()
            self._in_job = True
            if jobs and not self._watching:
                self._watch_soon()  # should this job block, the rest go on
            self._run_job(fn, args, emitter, event)
            if self._runner is me:
                self._in_job = False

    def _run_job(
        self,
        fn: Callable[..., object],
        args: Tuple[Any, ...],
        emitter: Optional[FailureHook],
        event: str,
    ) -> None:
        """Run one job; what it raises goes to its emitter's hook, else to the hub."""
        try:
            fn(*args)
        except GreenletExit:
            raise
        except BaseException as exc:
            if emitter is None or not _tell_emitter(self._hub, emitter, event, fn, args, exc):
                self._hub.handle_error(fn, *sys.exc_info())

    def _retire(self, me: greenlet) -> None:
        """``me`` stops (let go, or killed): another runner takes what is left."""
        if me in self._idle:
            self._idle.remove(me)
        if self._runner is me:
            self._runner = None
            self._in_job = False
            if self._jobs:
                self._start_runner()

    def _park(self, me: greenlet) -> None:
        """Wait in ``_idle`` until ``_start_runner`` picks this runner again."""
        self._idle.append(me)
        while self._runner is not me:
            try:
                self._hub.switch()
            except GreenletExit:
                raise
            except BaseException:  # e.g. a Timeout a finished job left armed
                self._hub.handle_error(me, *sys.exc_info())


def _tell_emitter(
    hub: Hub,
    emitter: FailureHook,
    event: str,
    fn: Callable[..., object],
    args: Tuple[Any, ...],
    exc: BaseException,
) -> bool:
    """Call ``emitter.on_listener_failed``; return whether it reported ``exc`` itself.

    An error in the hook is reported, not raised.
    """
    try:
        return bool(emitter.on_listener_failed(event, fn, args, exc))
    except Exception:
        hub.handle_error(emitter, *sys.exc_info())
        return False


def _dispatcher() -> Dispatcher:
    hub = get_hub()
    # (ignores: an attribute of our own on gevent's Hub, which its stubs cannot know)
    try:
        dispatcher: Dispatcher = hub.geventfork_dispatcher  # type: ignore[attr-defined]
    except AttributeError:
        dispatcher = hub.geventfork_dispatcher = Dispatcher(hub)  # type: ignore[attr-defined]
    return dispatcher


def submit(fn: Callable[..., object], *args: Any) -> None:
    """Run ``fn(*args)`` later, in a runner of this thread's hub.

    The one way the library runs something later (an event's listeners, a
    send's callback, a deferred ``emit``). The rule: calls run in the order
    they were submitted, never inside the caller's frame, each in a
    greenlet it may block in without holding up the ones after it (see the
    module docstring). A long-lived loop (a socket's reader) gets a
    greenlet of its own with ``gevent.spawn`` instead (a channel reads in
    its read watcher's callback, in the hub), and so does an
    event that must come before such a loop's first event (``'connect'``
    before ``'data'``); a call that must run in the hub itself, between two
    turns of the loop, goes through ``loop.run_callback``.
    """
    _dispatcher().submit(fn, args)


def submit_listener(
    emitter: FailureHook,
    event: str,
    listeners: Tuple[Callable[..., object], ...],
    args: Tuple[Any, ...],
) -> None:
    """Run each of ``listeners`` with ``args``, as ``submit`` does.

    A listener that raises is reported to ``emitter.on_listener_failed(event,
    listener, args, exc)``, then to the hub unless the hook reported it.
    """
    dispatcher = _dispatcher()
    for fn in listeners:
        dispatcher.submit(fn, args, emitter, event)
