"""A worker of ``geventfork serve``: the script each ``Pool`` worker runs.

Started as ``Pool("geventfork.serve.worker", n, [WorkerSettings(...).to_json()])``
(so ``sys.argv[1]`` is the settings), patched by the runner before this runs.
It imports the target, then serves each connection the parent sends
(``{"op": "connection", "head": STR}`` with a ``net.Socket``), in the
greenlet ``'message'`` gives it:

- WSGI (``wsgi.py``): requests, keep-alive; a connection idle for
  ``idle_return`` s goes back to the parent (``{"op": "idle", "head": STR}``
  with the socket), with the bytes read and not served.
- handler targets (``handlers.py``): the handler, then a graceful end.

Leaving:

- retiring (``max_requests`` reached: ``_worker.retire()``; or the pool asked:
  reload, resize): idle connections go back at once, busy ones after their
  response, new arrivals at once; handler connections finish. With none
  left, the worker disconnects and exits; after ``graceful_timeout`` it
  exits anyway.
- stopping (the channel closed: the pool closes, the parent died): idle
  connections close, busy ones finish with ``Connection: close``; the worker
  exits when none is left (the pool's ``_worker`` ends it ``graceful_timeout``
  s after the channel closed in any case).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, List, NoReturn, Optional, Set

import gevent

from .. import _worker as pool_worker
from .._stream import Socket
from ..errors import ChannelClosedError
from .access import AccessLog, handler_line, open_access_log, wsgi_line
from .handlers import end_gracefully, serve_handler
from .log import configure
from .settings import WorkerSettings
from .target import TargetError, kind, load
from .wsgi import RETIRE, STOP, Connection, Handler, make_server

if TYPE_CHECKING:  # pragma: no cover
    from gevent._types import _TimerWatcher

__all__ = ["Worker", "main"]

log = logging.getLogger("geventfork.serve")


class Worker:
    """This worker: the connections it serves, and whether it is leaving.

    Args:
        settings: from the parent.
        what: the target's kind: ``"wsgi"``, ``"socketserver"`` or ``"handler"``.
        target: the application, handler class or handle callable.
        access: where access lines go (None: nowhere).
    """

    def __init__(
        self, settings: WorkerSettings, what: str, target: Any, access: Optional[AccessLog]
    ) -> None:
        self.settings = settings
        self.kind = what
        self.target = target
        self.access = access
        self.pid = os.getpid()
        self.idle_return = settings.idle_return
        #: None while serving; ``RETIRE`` or ``STOP`` once leaving.
        self.leaving: Optional[str] = None
        self.served = 0  # requests (WSGI) or connections (handlers)
        self._server = make_server(target, log) if what == "wsgi" else None
        self._connections: Set[Socket] = set()  # ours until closed or handed back
        self._idle: Set[Connection] = set()  # waiting between requests
        self._deadline: Optional[_TimerWatcher] = None
        self._disconnecting = False

    def start(self) -> None:
        """Listen to the parent and the pool."""
        from .. import process

        process.on("message", self.on_message)
        process.on("disconnect", self.stop)
        process.on("error", lambda err: log.warning("channel to the parent: %s", err))
        pool_worker.on_retire(lambda: self.retire(tell_pool=False))
        # A terminal's Ctrl-C and systemd's stop reach every process of the
        # group: the parent stops the server, so INT is left to it, and TERM
        # retires this worker gracefully, as gunicorn's workers do.
        # (A handler, not SIG_IGN, which programs the app runs would inherit.)
        signal.signal(signal.SIGINT, _ignore_signal)
        gevent.signal_handler(signal.SIGTERM, self.retire, True)
        if not process.connected:  # the parent stopped while the app was importing
            self.stop()

    # -- connections --------------------------------------------------------

    def on_message(self, message: Any, handle: Any) -> None:
        """A connection from the parent: serve it here, or hand it back at once."""
        head = _head(message) if isinstance(handle, Socket) else None
        if head is None:
            log.warning("unexpected message from the parent: %.100r", message)
            if isinstance(handle, Socket):
                end_gracefully(handle)
            return
        self._connections.add(handle)
        if self.leaving == RETIRE and not self._disconnecting:
            self.hand_back(handle, head)
        elif self._server is not None:
            Connection(self._server, self, handle, head).serve()
        else:
            self._serve_handler(handle, head)

    def _serve_handler(self, net_socket: Socket, head: bytes) -> None:
        if head:
            # Only a WSGI worker hands connections back with bytes read, and
            # one kind of target serves a whole server: this is not reached.
            log.warning("a handler target cannot be given %d bytes already read: closed", len(head))
            end_gracefully(net_socket)
            self.closed(net_socket)
            return
        self._count()  # on arrival: a retiring worker is sent no more
        served = serve_handler(net_socket, self.kind, self.target)
        self.closed(net_socket)
        if self.access is not None:
            line = handler_line(
                served.address,
                served.received,
                served.sent,
                served.seconds,
                self.settings.pool,
                self.pid,
            )
            self.access.write(line)

    def waiting(self, connection: Connection, idle: bool) -> None:
        """``wsgi.Host``: ``connection`` waits between requests (or stops waiting)."""
        if idle:
            self._idle.add(connection)
        else:
            self._idle.discard(connection)

    def requested(self, handler: Handler) -> None:
        """``wsgi.Host``: one request answered: its access line, and the count."""
        if self.access is not None:
            line = wsgi_line(
                handler.client_address,
                handler.requestline or "",
                str(handler.code) if handler.code else "-",
                handler.body_length,
                max(0.0, handler.time_finish - handler.time_start),
                self.settings.pool,
                self.pid,
                handler.time_finish,
            )
            self.access.write(line)
        self._count()

    def hand_back(self, net_socket: Socket, head: bytes) -> None:
        """``wsgi.Host``: send the connection to the parent with ``head``.

        If that fails (the channel closed), it is ended gracefully instead.
        """
        from .. import process

        def sent(err: Optional[BaseException]) -> None:
            if err is not None:
                log.debug("handing a connection back failed: %s", err)
                end_gracefully(net_socket)
            self.closed(net_socket)

        try:
            process.send({"op": "idle", "head": head.decode("latin-1")}, net_socket, None, sent)
        except ChannelClosedError:  # stopping: the channel closed meanwhile
            end_gracefully(net_socket)
            self.closed(net_socket)
        except Exception as exc:  # the socket cannot be sent (destroyed): never left open
            log.warning("cannot hand a connection back: %s", exc)
            end_gracefully(net_socket)
            self.closed(net_socket)

    def closed(self, net_socket: Socket) -> None:
        """``wsgi.Host``: this worker is done with ``net_socket`` (ended, or
        handed back); a retiring worker with none left disconnects."""
        self._connections.discard(net_socket)
        if self.leaving == RETIRE and not self._connections:
            self._disconnect()

    def _count(self) -> None:
        self.served += 1
        if self.settings.max_requests and self.served >= self.settings.max_requests:
            if self.leaving is None:
                log.info("max requests (%d) reached: retiring", self.settings.max_requests)
            self.retire(tell_pool=True)

    # -- leaving ------------------------------------------------------------

    def retire(self, tell_pool: bool) -> None:
        """Hand idle connections back now, the others when done; then exit.

        Args:
            tell_pool: whether the pool must be told (``max_requests``), or
                asked for it (``on_retire``).
        """
        if self.leaving is not None:
            return
        self.leaving = RETIRE
        if tell_pool:
            pool_worker.retire()
        self._wake(RETIRE)
        self._deadline = gevent.get_hub().loop.timer(self.settings.graceful_timeout, ref=False)
        self._deadline.start(self._give_up)
        if not self._connections:
            self._disconnect()

    def stop(self) -> None:
        """The channel closed: close idle connections, finish the others.

        The process exits once nothing is left to serve (the runner's loop).
        """
        if self.leaving != STOP:
            self.leaving = STOP
            self._wake(STOP)

    def _wake(self, reason: str) -> None:
        for connection in list(self._idle):
            connection.wake(reason)

    def _disconnect(self) -> None:
        from .. import process

        if not self._disconnecting:
            self._disconnecting = True
            if process.connected:
                process.disconnect()

    def _give_up(self) -> None:
        """``graceful_timeout`` passed while retiring: exit, whatever is left.

        The pool keeps its own copy of each connection left, and ends it
        gracefully once this worker is gone: no client gets a reset.
        """
        from .. import process

        log.warning(
            "graceful timeout (%g s): exiting with %d connection(s) left",
            self.settings.graceful_timeout,
            len(self._connections),
        )
        if process.connected:
            # Not waiting for 'disconnect': the channel holds the connections
            # left until they are done, and only then says it closed.
            process.disconnect()
        gevent.get_hub().loop.run_callback(_exit_now)  # after the flush just scheduled


def _head(message: Any) -> Optional[bytes]:
    """The bytes of a ``{"op": "connection", "head": STR}`` message; None for another."""
    if not isinstance(message, dict) or message.get("op") != "connection":
        return None
    head = message.get("head", "")
    try:
        return head.encode("latin-1") if isinstance(head, str) else None
    except UnicodeEncodeError:
        return None


def _freeze_heap() -> None:
    """Leave what the app's import made out of every later garbage collection.

    A full collection walks every object tracked, and an imported app
    (Flask's) has enough of them that one took 30-50 ms, every connection of
    the worker stalled meanwhile: most of the slowest answers under load.
    Frozen, they are never walked again (nor freed: they live as long as the
    worker anyway).
    """
    gc.collect()
    gc.freeze()


def _ignore_signal(signum: int, frame: Any) -> None:
    """SIGINT in a worker: the parent stops the server."""


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _fail(logger: logging.Logger, message: str) -> NoReturn:
    logger.error("%s", message)
    sys.exit(1)


def main(argv: List[str]) -> None:
    """Load the target and serve what the parent sends.

    Args:
        argv: ``[script, SETTINGS_JSON]``.

    A target that does not load, or an access log that cannot be opened:
    one line on stderr, exit status 1.
    """
    settings = WorkerSettings.from_json(argv[1])
    logger = configure(settings.log_level)
    cwd = os.getcwd()
    if not sys.path or sys.path[0] != cwd:  # the app's modules first, as gunicorn
        sys.path.insert(0, cwd)
    try:
        target = load(settings.target)
        what = kind(target, settings.handler)
    except TargetError as exc:
        _fail(logger, str(exc))
    try:
        access = open_access_log(settings.access_log)
    except OSError as exc:
        _fail(logger, f"cannot open the access log {settings.access_log!r}: {exc.strerror}")
    Worker(settings, what, target, access).start()
    _freeze_heap()
    logger.debug("Booting worker with pid: %d", os.getpid())


if __name__ == "__main__":
    main(sys.argv)
