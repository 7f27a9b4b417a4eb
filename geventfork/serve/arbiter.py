"""The parent of ``geventfork serve``: binds, pools, routing, signals, pid file.

It accepts every connection (nothing read), picks a pool by the client's
address, and hands the socket to a worker of that pool; it holds the
keep-alive connections workers hand back between requests (``idle.py``).
Signals, as gunicorn's arbiter takes them: TERM/INT stop gracefully, QUIT
quickly, HUP reloads, TTIN/TTOU add or remove a worker of the default pool.
"""

from __future__ import annotations

import gc
import logging
import os
import signal as _signal
from typing import Any, Callable, Dict, List, Optional, Set

import gevent
from gevent.event import AsyncResult

from .. import __version__
from .._pool import Pool
from ..errors import WorkerStartupError
from ..child_process import ChildProcess
from ..net import Socket
from .check import LOG_PREFIX, check_target
from .idle import IdleConnections
from .listeners import BindError, Listener, Proxy, listen_all
from .log import configure as configure_log
from .pidfile import PidFile, PidFileError
from .routing import Router, pool_sizes
from .settings import DEFAULT_POOL, Settings, WorkerSettings

__all__ = ["run", "Arbiter", "WORKER_MODULE"]

#: The script every worker runs, with a ``WorkerSettings`` JSON as its argument.
WORKER_MODULE = "geventfork.serve.worker"


class StartupError(Exception):
    """The server cannot start: ``str()`` is the one line to show."""


def run(settings: Settings, log: logging.Logger) -> int:
    """Serve ``settings.target`` until a signal stops the server.

    Called by ``geventfork.serve.main`` once the process is patched, the
    options parsed and the target checked.

    Args:
        settings: what to serve, and how.
        log: the server's logger (gunicorn's line format).

    Returns:
        The exit status: 0 after a stop by signal, 1 when the server could not
        start (one line logged; no worker left running).
    """
    # The library's own lines (a PROXY header refused, a hand-off that failed)
    # in the server's format and at its level, not Python's bare last resort.
    configure_log(settings.log_level, "geventfork")
    if settings.chdir:
        try:
            os.chdir(settings.chdir)
        except OSError as exc:
            log.error("cannot change to directory %s: %s", settings.chdir, exc.strerror or exc)
            return 1
    return Arbiter(settings, log).run()


class Arbiter:
    """The parent process's state: listeners, pools, idle connections.

    Args:
        settings: what to serve, and how.
        log: the server's logger.
    """

    def __init__(self, settings: Settings, log: logging.Logger) -> None:
        self.settings = settings
        self.log = log
        self.cwd = os.getcwd()
        self.router = Router(settings.route)
        self.listeners: List[Listener] = []
        self.pools: Dict[str, Pool] = {}
        self.idle = IdleConnections(self._hand_off, settings.keep_alive)
        self._checks: Set[Any] = set()  # a reload's check process, while it runs
        self.stopping = False
        self._booted: set[int] = set()  # the first workers' pids, logged with their pool
        self._pid_file = PidFile(settings.pid) if settings.pid else None
        self._exit: AsyncResult[int] = AsyncResult()
        self._reloading = False
        self._reload_again = False
        self._status = 0  # the exit status once stopped
        self._pending: Optional[List[Callable[[], None]]] = []  # signals during start-up
        self._early: Optional[List[Socket]] = []  # connections accepted during start-up

    # -- life -------------------------------------------------------------

    def run(self) -> int:
        """Start, serve until stopped by a signal, clean up.

        Returns:
            The exit status (see ``run()``).
        """
        # Handlers first: a signal during start-up (a TTIN's default action
        # suspends the process) waits until the pools are up.
        handlers = self._install_signal_handlers()
        try:
            try:
                self._start()
            except StartupError as exc:
                self.log.error("%s", exc)
                for conn in self._early or []:
                    conn.end()
                self._stop_pools(0)
                return 1
            self._run_pending()
            # As each worker does (worker._freeze_heap): the objects start-up
            # made are never walked by a full collection again.
            gc.collect()
            gc.freeze()
            return self._exit.get() or 0
        finally:
            for handler in handlers:
                handler.cancel()
            self._release()

    def _start(self) -> None:
        """Bind first, so that a bind that fails leaves no worker behind."""
        try:
            self.listeners = listen_all(self.settings.bind, self._proxy())
        except BindError as exc:
            raise StartupError(str(exc)) from None
        if self._pid_file is not None:
            try:
                self._pid_file.write()
            except PidFileError as exc:
                raise StartupError(str(exc)) from None
        _check_access_log(self.settings.access_log)
        _raise_fd_limit()
        self.log.info("starting geventfork %s (pid %d)", __version__, os.getpid())
        for listener in self.listeners:
            # Accepting starts now: what comes before the pools waits for them.
            listener.server.on("connection", self._on_connection)
            listener.server.on("error", self._on_server_error)
            self.log.info("listening on %s", listener.url)
        if self.settings.proxy_protocol:
            self.log.info(
                "PROXY protocol: headers believed from %s",
                ", ".join(map(str, self.settings.proxy_allow)),
            )
        for name, size in pool_sizes(self.settings.workers, self.settings.route):
            self.pools[name] = self._new_pool(name, size)
            pids = ", ".join(str(child.pid) for child in self.pools[name].workers)
            self._booted.update(child.pid for child in self.pools[name].workers if child.pid)
            self.log.info("pool %s: %d worker%s (pids %s)", name, size, _s(size), pids)
        early, self._early = self._early or [], None
        for conn in early:
            self._hand_off(conn, "")

    def _proxy(self) -> Optional[Proxy]:
        """What the listeners need of ``--proxy-protocol``, or None without it."""
        settings = self.settings
        if not settings.proxy_protocol:
            return None
        return Proxy(tuple(map(str, settings.proxy_allow)), settings.proxy_timeout)

    def _new_pool(self, name: str, size: int) -> Pool:
        settings = self.settings
        args = WorkerSettings(
            target=settings.target,
            handler=settings.handler,
            pool=name,
            max_requests=settings.max_requests,
            idle_return=settings.idle_return,
            graceful_timeout=settings.graceful_timeout,
            access_log=settings.access_log,
            log_level=settings.log_level,
        ).to_json()
        try:
            pool = Pool(
                WORKER_MODULE,
                size,
                [args],
                shutdown_timeout=settings.graceful_timeout,
                heartbeat=settings.timeout or None,
                cwd=self.cwd,
                serialization="json",
            )
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot start the workers of pool {name}: {exc}") from None
        self._watch_pool(name, pool)
        return pool

    def _watch_pool(self, name: str, pool: Pool) -> None:
        pool.on("message", lambda worker, message, handle: self._on_message(message, handle))
        pool.on("spawn", lambda worker: self._on_spawn(name, worker))
        pool.on("exit", lambda worker, code, signal: self._on_exit(name, worker, code, signal))
        pool.on("timeout", lambda worker: self._on_timeout(name, worker))
        pool.on("error", lambda err: self._on_pool_error(name, err))

    def _release(self) -> None:
        """Close what is left: listeners (and their socket files), the pid file."""
        for listener in self.listeners:
            listener.close()
        self.listeners = []
        if self._pid_file is not None:
            self._pid_file.remove()

    # -- connections ------------------------------------------------------

    def _on_connection(self, conn: Socket) -> None:
        if self._early is not None:
            self._early.append(conn)  # the pools are still starting
        else:
            self._hand_off(conn, "")

    def _hand_off(self, conn: Socket, head: str) -> None:
        """Send ``conn`` to a worker of its client's pool, with the bytes of
        its next request a worker read already (``head``)."""
        if self.stopping:
            conn.end()
            return
        if self.router:
            pool = self.pools[self.router.pool_for(conn.remote_address)]
        else:  # no --route: nothing to look up
            pool = self.pools[DEFAULT_POOL]
        conn.pause()  # the worker reads it; nothing here ever does
        try:
            # A send that fails later ends the socket (the client gets EOF)
            # and is reported as the pool's 'error'.
            pool.send({"op": "connection", "head": head}, conn)
        except Exception as exc:
            self.log.error("cannot hand a connection to a worker: %s", exc)
            conn.end()

    def _on_message(self, message: Any, handle: Any) -> None:
        """A worker's message: an idle connection handed back, or nothing we know."""
        if not isinstance(handle, Socket):
            if handle is not None:
                handle.close()
            self.log.debug("ignored a message from a worker: %r", message)
            return
        if self.stopping or not isinstance(message, dict) or message.get("op") != "idle":
            handle.end()
            return
        head = message.get("head") or ""
        self.idle.add(handle, head if isinstance(head, str) else "")

    def _on_server_error(self, err: BaseException) -> None:
        self.log.error("accepting a connection failed: %s", err)

    # -- pool events ------------------------------------------------------

    def _on_spawn(self, name: str, worker: ChildProcess) -> None:
        if worker.pid in self._booted:
            self._booted.discard(worker.pid)  # logged with its pool already
        elif not self.stopping:
            self.log.info("pool %s: worker %s started", name, worker.pid)

    def _on_exit(
        self, name: str, worker: ChildProcess, code: Optional[int], signal: Optional[str]
    ) -> None:
        if signal:
            self.log.warning("pool %s: worker %s killed by %s", name, worker.pid, signal)
        elif code:
            self.log.warning("pool %s: worker %s exited with status %s", name, worker.pid, code)
        else:
            self.log.info("pool %s: worker %s exited", name, worker.pid)

    def _on_timeout(self, name: str, worker: ChildProcess) -> None:
        self.log.error(
            "pool %s: worker %s did not answer for %g s (stuck in a blocking call?): killing it",
            name,
            worker.pid,
            self.settings.timeout,
        )

    def _on_pool_error(self, name: str, err: BaseException) -> None:
        line = getattr(err, "summary", None) or str(err).partition("\n")[0]
        if isinstance(err, WorkerStartupError) and not self.pools[name].started:
            # Workers that never once got going will not: a start-up failure.
            self.log.error("pool %s: the workers cannot start: %s", name, _last_line(err))
            self._status = 1
            self.stop(graceful=False)
            return
        self.log.error("pool %s: %s: %s", name, type(err).__name__, line)

    # -- signals ----------------------------------------------------------

    def _install_signal_handlers(self) -> List[Any]:
        actions: Dict[int, Callable[[], None]] = {
            _signal.SIGTERM: lambda: self.stop(graceful=True),
            _signal.SIGINT: lambda: self.stop(graceful=True),
            _signal.SIGQUIT: lambda: self.stop(graceful=False),
            _signal.SIGHUP: self.reload,
            _signal.SIGTTIN: lambda: self.resize(+1),
            _signal.SIGTTOU: lambda: self.resize(-1),
        }
        return [
            gevent.signal_handler(signum, self._on_signal, action)
            for signum, action in actions.items()
        ]

    def _on_signal(self, action: Callable[[], None]) -> None:
        if self._pending is not None:
            self._pending.append(action)  # still starting: after start-up
        else:
            action()

    def _run_pending(self) -> None:
        pending, self._pending = self._pending or [], None
        for action in pending:
            gevent.spawn(action)

    def stop(self, graceful: bool) -> None:
        """Stop accepting; close idle connections; let workers finish
        (``--graceful-timeout`` s at most, none when not ``graceful``); exit 0.

        QUIT during a graceful stop kills the workers; TERM and INT again do
        nothing more (a terminal's Ctrl-C may reach the server twice).
        """
        if self.stopping:
            if not graceful:
                self.log.info("stopping now: killing the workers")
                self._stop_pools(0)
            return
        self.stopping = True
        timeout = self.settings.graceful_timeout if graceful else 0.0
        if graceful:
            self.log.info("stopping: workers get up to %g s to finish", timeout)
        else:
            self.log.info("stopping now")
        for listener in self.listeners:
            listener.close()
        for check in list(self._checks):  # a reload's check: not left behind
            check.kill()
        self.idle.close_all()
        self._stop_pools(timeout)
        self.log.info("stopped")
        self._exit.set(self._status)

    def _stop_pools(self, timeout: float) -> None:
        """Close every pool at once; wait for them all."""
        gevent.joinall([gevent.spawn(pool.close, timeout) for pool in self.pools.values()])

    def reload(self) -> None:
        """Check the target in a fresh process; then replace every worker.

        A target that no longer loads keeps the running workers. A HUP that
        arrives during a reload makes one more reload after it.
        """
        if self.stopping:
            return
        if self._reloading:
            self._reload_again = True
            return
        self._reloading = True
        try:
            again = True
            while again and not self.stopping:
                self._reload_again = False
                self._reload_once()
                again = self._reload_again
        finally:
            self._reloading = False

    def _reload_once(self) -> None:
        self.log.info("reloading: checking %s", self.settings.target)
        problem = check_target(self.settings.target, self.settings.handler, self.cwd, self._checks)
        if problem is not None:
            self.log.error("reload failed, the running workers go on: %s", problem)
            return
        if self.stopping:
            return
        for name, pool in self.pools.items():
            self.log.info("pool %s: reloading: new workers start, the old ones retire", name)
            pool.reload()

    def resize(self, delta: int) -> None:
        """One worker more (``+1``) or fewer (``-1``, one at least) in the default pool."""
        if self.stopping:
            return
        pool = self.pools[DEFAULT_POOL]
        size = max(1, pool.size + delta)
        if size == pool.size:
            self.log.info("pool %s: keeping its last worker", DEFAULT_POOL)
            return
        pool.resize(size)
        self.log.info("pool %s: %d worker%s", DEFAULT_POOL, size, _s(size))


def _s(count: int) -> str:
    return "" if count == 1 else "s"


def _check_access_log(path: Optional[str]) -> None:
    """Raise ``StartupError`` unless the access log can be opened for appending."""
    if path is None or path == "-":
        return
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        raise StartupError(f"cannot open the access log {path!r}: {exc.strerror}") from None


def _raise_fd_limit() -> None:
    """The parent holds an fd per connection a worker serves or the parent
    keeps idle: let it (and the workers) have as many as allowed."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            pass


def _last_line(err: BaseException) -> str:
    """The last non-empty line of a worker's stderr in ``err``, else its summary."""
    stderr = getattr(err, "stderr", "") or ""
    lines = [LOG_PREFIX.sub("", line).strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else getattr(err, "summary", str(err))
