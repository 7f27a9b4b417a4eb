"""``fork()`` and ``ChildProcess``: Node's ``child_process.fork``, on gevent."""

from __future__ import annotations

import errno
import os
import signal as _signal
import site
import sys
from contextlib import contextmanager
from typing import (
    IO,
    TYPE_CHECKING,
    Any,
    Dict,
    Iterator,
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
from gevent import subprocess
from gevent.event import Event

from ._dispatch import submit
from . import _forkserver, _wire
from ._channel import MAX_QUEUED, Channel
from ._environ import (
    CHANNEL_FD_ENV,
    MAX_MESSAGE_SIZE_ENV,
    MAX_QUEUED_ENV,
    MONKEY_ENV,
    SERIALIZATION_ENV,
)
from ._owner import ChannelOwner
from ._serialization import Codec, by_name

if TYPE_CHECKING:  # pragma: no cover
    import _socket

    from greenlet import greenlet

__all__ = ["fork", "ChildProcess", "resolve_module"]

#: The largest payload a frame's header can announce (its size field is a u32).
_MAX_PAYLOAD = 0xFFFFFFFF
#: What each ``stdio`` entry of ``fork()`` means to ``subprocess.Popen``.
_STDIO = {"pipe": subprocess.PIPE, "inherit": None, "ignore": subprocess.DEVNULL}
#: A signal as ``kill()`` takes it: a number, a ``signal.Signals``, or a name.
SignalLike = Union[int, str]
#: ``fork()``'s ``start_method``s: from the fork server's template where it
#: applies (the default), or a new interpreter every time.
START_METHODS = ("forkserver", "spawn")


class ChildProcess(ChannelOwner):
    """A child started by ``fork()``; the parent's handle on it.

    Events: ``'spawn'``, ``'message'(message, handle)``, ``'disconnect'``,
    ``'exit'(code, signal)``, ``'close'(code, signal)``, ``'error'(err)``.
    ``'close'`` follows once the child has exited and the channel has closed.
    The library's own messages (a dict whose ``cmd`` starts with
    ``GEVENTFORK_``) are ``'internalMessage'``, as Node's ``NODE_`` ones are.
    """

    def __init__(
        self,
        args: List[str],
        env: Dict[str, str],
        cwd: Optional[str],
        stdio: Tuple[str, ...],
        codec: Codec,
        max_size: int,
        max_queued: int,
        timeout: Optional[float] = None,
        kill_signal: int = _signal.SIGTERM,
        forkserver: bool = False,
    ) -> None:
        """Start the child; ``fork()`` checks and builds these arguments (use it).

        Args:
            args: the child's command line.
            env: its environment, to which the channel's fd is added.
            cwd: its working directory, or None for ours.
            stdio: ``"pipe"``, ``"inherit"`` or ``"ignore"`` for each stream.
            codec: how this end encodes messages.
            max_size: the largest message payload sent or accepted.
            max_queued: the most bytes queued for the child.
            timeout: seconds after which the child is sent ``kill_signal``.
            kill_signal: the signal number ``timeout`` kills with.
            forkserver: have a template fork it (``_forkserver``); it is
                spawned if that fails.
        """
        super().__init__()
        self.pid: Optional[int] = None
        #: The exit status, or None (still running, or killed by a signal).
        self.exit_code: Optional[int] = None
        #: The name of the signal that ended the child (``"SIGKILL"``), or None.
        self.signal_code: Optional[str] = None
        #: True once ``kill()`` delivered a signal.
        self.killed = False
        self.spawnargs: List[str] = []
        self.stdin: Optional[IO[bytes]] = None
        self.stdout: Optional[IO[bytes]] = None
        self.stderr: Optional[IO[bytes]] = None
        self._popen: Optional[Union[subprocess.Popen[bytes], _forkserver.Adopted]] = None
        # The loop timer behind ``timeout``: Any, as gevent's stubs omit the
        # ``ref`` that _set_ref sets.
        self._timer: Any = None
        self._exit_done = Event()  # set once the 'exit' listeners have run
        self._exit_greenlet: Optional[greenlet] = None
        self._disconnected = False
        self._referenced = True
        self._spawn(args, env, cwd, stdio, codec, max_size, max_queued, forkserver)
        if timeout is not None and self._popen is not None:
            self._timer = gevent.get_hub().loop.timer(timeout)
            self._timer.start(self.kill, kill_signal)

    def kill(self, signal: SignalLike = _signal.SIGTERM) -> bool:
        """Send ``signal``; return whether it was delivered (Node's ``kill``).

        Args:
            signal: a number, a ``signal.Signals``, or a name, with or
                without its ``SIG`` prefix (``"SIGKILL"``, ``"KILL"``), as
                Node takes names.

        Returns:
            False when the child is gone (or never started), True otherwise.

        Raises:
            ValueError: an unknown signal name or number.
            TypeError: ``signal`` is neither a number nor a name.
        """
        number = signal_number(signal)
        if self._popen is None or self._ended or self._popen.returncode is not None:
            return False  # exited (reaped: its pid may be reused)
        try:
            os.kill(self._popen.pid, number)
        except ProcessLookupError:
            return False
        self.killed = True
        return True

    def wait(self, timeout: Optional[float] = None) -> int:
        """Block the calling greenlet until the child has exited.

        Returns once the ``'exit'`` listeners have run, with ``exit_code`` or
        ``signal_code`` set (called from an ``'exit'`` listener, at once).

        Returns:
            The exit code, or minus the signal number when a signal ended it
            (as ``subprocess`` does).

        Raises:
            subprocess.TimeoutExpired: still running after ``timeout`` seconds.
            ChildProcessError: the child never started.
        """
        if self._popen is None:
            raise ChildProcessError("the child process never started")
        in_exit_listener = self._exit_greenlet is gevent.getcurrent()
        if not in_exit_listener and not self._exit_done.wait(timeout):
            # Cast: wait(None) returns only once set, so timeout is a number here.
            raise subprocess.TimeoutExpired(self.spawnargs, cast(float, timeout))
        return cast(int, self._popen.returncode)  # set: the child exited

    def ref(self) -> None:
        """Let the child (and its channel) keep this process alive (the default)."""
        self._set_ref(True)

    def unref(self) -> None:
        """Let this process exit while the child runs.

        Unlike Node's, this also unrefs the channel: a Python user asking
        not to be kept alive by a child means the whole child.
        """
        self._set_ref(False)

    def __repr__(self) -> str:
        return (
            f"<ChildProcess pid={self.pid} exit_code={self.exit_code} "
            f"signal_code={self.signal_code}>"
        )

    # -- spawning and exit ------------------------------------------------

    def _closed_reason(self) -> Optional[str]:
        if self._popen is None:
            return "the child process never started"
        if self._ended:
            how = f"by {self.signal_code}" if self.signal_code else f"with code {self.exit_code}"
            return f"the child process exited ({how})"
        if self.channel is not None and not self.channel.connected and not self._disconnect_called:
            return "the IPC channel to the child is closed"
        return super()._closed_reason()

    def _spawn(
        self,
        args: List[str],
        env: Dict[str, str],
        cwd: Optional[str],
        stdio: Tuple[str, ...],
        codec: Codec,
        max_size: int,
        max_queued: int,
        forkserver: bool = False,
    ) -> None:
        import _socket

        self.spawnargs = args
        if forkserver:
            forked = self._fork_from_template(args, env, cwd, stdio)
            if forked is not None:
                self._started(forked, codec, max_size, max_queued)
                return
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        env[CHANNEL_FD_ENV] = str(theirs.fileno())
        stdin, stdout, stderr = (_STDIO[entry] for entry in stdio)
        try:
            with _sigint_blocked():
                self._popen = subprocess.Popen(
                    args,
                    pass_fds=(theirs.fileno(),),
                    cwd=cwd,
                    env=env,
                    stdin=stdin,
                    stdout=stdout,
                    stderr=stderr,
                )
        except OSError as exc:
            ours.close()
            submit(self.emit, "error", exc)
            return
        finally:
            theirs.close()
        self._started(ours, codec, max_size, max_queued)

    def _fork_from_template(
        self, args: List[str], env: Dict[str, str], cwd: Optional[str], stdio: Tuple[str, ...]
    ) -> Optional[_socket.socket]:
        """Have the fork server's template fork the child; return our end of
        its channel (None: spawn it instead, nothing was started)."""
        import _socket

        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            self._popen = _forkserver.fork_child(args, env, cwd, stdio, theirs.fileno())
        finally:
            theirs.close()
        if self._popen is None:
            ours.close()  # a fresh pair for the spawned child
            return None
        return ours

    def _started(self, ours: _socket.socket, codec: Codec, max_size: int, max_queued: int) -> None:
        popen = cast(Any, self._popen)
        self.pid = popen.pid
        self.stdin, self.stdout, self.stderr = popen.stdin, popen.stdout, popen.stderr
        submit(self.emit, "spawn")
        self.channel = Channel(ours, self, codec, max_size, max_queued=max_queued)
        # gevent's Popen.rawlink (called on exit, in the hub) is not in its stubs.
        popen.rawlink(lambda popen: submit(self._on_exit, popen.returncode))

    def _on_exit(self, returncode: int) -> None:
        self._ended = True  # it exited: ChannelOwner.send() raises from now on
        self._exit_greenlet = gevent.getcurrent()
        if self._timer is not None:
            self._timer.stop()
        self._record_exit(returncode)
        try:
            self.emit("exit", self.exit_code, self.signal_code)
        finally:
            self._exit_done.set()  # wait() returns after the listeners
        self._maybe_close()

    def _record_exit(self, returncode: int) -> None:
        if returncode < 0:
            self.signal_code = _signal.Signals(-returncode).name
        else:
            self.exit_code = returncode

    def on_channel_closed(self) -> None:
        """Hook (see ``ChannelOwner``): ``'disconnect'``, then ``'close'`` if the child exited."""
        self._disconnected = True
        super().on_channel_closed()
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self._ended and self._disconnected:
            self.emit("close", self.exit_code, self.signal_code)

    def _set_ref(self, referenced: bool) -> None:
        self._referenced = referenced
        if self.channel is not None:
            (self.channel.ref if referenced else self.channel.unref)()
        watcher = _child_watcher(self.pid)
        if watcher is not None:
            watcher.ref = referenced
        if self._timer is not None:
            self._timer.ref = referenced


def _child_watcher(pid: Optional[int]) -> Any:
    """The loop's child watcher for ``pid``: gevent keeps it in ``gevent.os``."""
    import gevent.os

    watcher = getattr(gevent.os, "_watched_children", {}).get(pid)
    return None if isinstance(watcher, tuple) else watcher


def fork(
    module: Union[str, "os.PathLike[str]"],
    args: Sequence[Any] = (),
    *,
    exec_path: Optional[str] = None,
    exec_argv: Sequence[str] = (),
    cwd: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    silent: bool = False,
    stdio: Union[str, Sequence[str], None] = None,
    serialization: str = "json",
    monkey: bool = True,
    kill_signal: SignalLike = _signal.SIGTERM,
    timeout: Optional[float] = None,
    max_message_size: int = _wire.MAX_FRAME_SIZE,
    max_queued: int = MAX_QUEUED,
    start_method: str = "forkserver",
) -> ChildProcess:
    """Start ``module`` in a new Python process with an IPC channel to it.

    Like Node's ``child_process.fork``: the child runs under
    ``python -m geventfork`` (patched with gevent unless ``monkey=False``)
    and talks back through ``geventfork.process``.

    Args:
        module: a path to a Python file (a relative path is taken from
            ``cwd``, or else from the current directory, as Node does), or
            a dotted module name.
        args: the script's arguments (``process.argv[2:]`` in the child).
        exec_path: the Python to run (default ``sys.executable``).
        exec_argv: options for that Python, before ``-m geventfork``.
        cwd: the child's working directory.
        env: the child's environment (default: ours).
        silent: pipe the child's stdin/stdout/stderr to ``child.stdin`` /
            ``child.stdout`` / ``child.stderr`` instead of inheriting ours
            (``stdio="pipe"``).
        stdio: Node's ``stdio`` for stdin, stdout and stderr: three of
            ``"pipe"`` (to ``child.stdin`` / ``child.stdout`` /
            ``child.stderr``), ``"inherit"`` (ours) and ``"ignore"``
            (``/dev/null``), or one of them for all three. The IPC channel
            is always there; an ``"ipc"`` entry, as Node's arrays have, is
            accepted and ignored. Default: all ``"inherit"``.
        serialization: ``"json"`` or ``"pickle"``.
        monkey: patch the child with ``gevent.monkey.patch_all()``.
        kill_signal: the signal ``timeout`` kills with (a number or a name).
        timeout: seconds after which the child is sent ``kill_signal``.
        max_message_size: the largest message either end accepts, in bytes.
        max_queued: the most bytes either end queues for the other (each
            handle awaiting its acknowledgment counting 1 KiB) before
            ``send()`` raises ``ChannelBusyError`` (default 64 MiB).
        start_method: ``"forkserver"`` (the default): the child is forked
            from a template process that has imported gevent, patched and
            imported geventfork already, where that applies (Linux, the
            default ``exec_path`` and ``exec_argv``), else spawned;
            ``"spawn"``: always a new interpreter.

    Returns:
        The ``ChildProcess``. A failure to start the Python interpreter is
        emitted as ``'error'``.

    Raises:
        FileNotFoundError: ``module`` names a file that does not exist (the
            message says which absolute path was tried); nothing was started.
        TypeError: both ``silent=True`` and ``stdio``.
        ValueError: an unknown ``serialization``, ``stdio`` entry,
            ``kill_signal`` or ``start_method``, or a ``max_message_size`` a
            frame cannot announce (1 to 4 GiB - 1: its size field is a u32).
    """
    if start_method not in START_METHODS:
        raise ValueError(f"start_method must be one of {START_METHODS}, not {start_method!r}")
    codec = by_name(serialization)
    if not 0 < max_message_size <= _MAX_PAYLOAD:
        raise ValueError(
            f"max_message_size must be from 1 to {_MAX_PAYLOAD} bytes, not {max_message_size}"
        )
    if max_queued < 1:
        raise ValueError(f"max_queued must be a positive number of bytes, not {max_queued}")
    streams = _stdio(silent, stdio)
    kill_signal = signal_number(kill_signal)
    script = resolve_module(module, cwd)
    child_env = dict(os.environ if env is None else env)
    child_env[SERIALIZATION_ENV] = codec.name
    child_env[MONKEY_ENV] = "1" if monkey else "0"
    child_env[MAX_MESSAGE_SIZE_ENV] = str(max_message_size)
    child_env[MAX_QUEUED_ENV] = str(max_queued)
    _make_importable(child_env)
    argv = [exec_path or sys.executable, *exec_argv, "-m", "geventfork", script]
    return ChildProcess(
        argv + [str(a) for a in args],
        child_env,
        cwd,
        streams,
        codec,
        max_message_size,
        max_queued,
        timeout,
        kill_signal,
        forkserver=start_method == "forkserver"
        and exec_path in (None, sys.executable)
        and not exec_argv
        and _forkserver.available(),
    )


def resolve_module(module: Union[str, "os.PathLike[str]"], cwd: Optional[str] = None) -> str:
    """The script ``fork()`` runs for ``module``: an absolute path, or a module name.

    A name ending in ``.py``, holding a path separator, or naming something
    that exists is a path, taken from ``cwd`` (default: the current
    directory) when relative; anything else is a dotted module name, which
    the child looks up.

    Raises:
        FileNotFoundError: the path does not exist, or is a folder without
            a ``__main__.py``; the message names the absolute path tried.
    """
    name = os.fspath(module)
    base = os.path.abspath(cwd) if cwd is not None else os.getcwd()
    path = os.path.normpath(os.path.join(base, name))
    if not (name.endswith(".py") or os.sep in name or os.path.exists(path)):
        return name
    runnable = os.path.isfile(path) or os.path.isfile(os.path.join(path, "__main__.py"))
    if not runnable:
        what = "no __main__.py in this folder" if os.path.isdir(path) else "no such file"
        if not os.path.isabs(name):
            base_name = f"cwd={cwd!r}" if cwd is not None else "the current directory"
            what += f" ({name!r} taken from {base_name})"
        raise FileNotFoundError(errno.ENOENT, f"cannot fork: {what}", path)
    return path


def signal_number(sig: SignalLike) -> int:
    """The number of ``sig``: a number, a ``signal.Signals``, or a name (``'SIGKILL'``, ``'KILL'``).

    Raises:
        ValueError: no such signal.
        TypeError: neither a number nor a string.
    """
    if isinstance(sig, str):
        name = sig if sig.startswith("SIG") else f"SIG{sig}"
        number = getattr(_signal.Signals, name, None) if not name.startswith("SIG_") else None
        if number is None:
            raise ValueError(f"unknown signal {sig!r}")
        return int(number)
    if isinstance(sig, bool) or not isinstance(sig, int):
        raise TypeError(
            f"a signal is a number or a name such as 'SIGKILL', not {type(sig).__name__}"
        )
    if sig != 0 and sig not in _signal.valid_signals():
        raise ValueError(f"unknown signal {sig}")
    return int(sig)


def _stdio(silent: bool, stdio: Union[str, Sequence[str], None]) -> Tuple[str, ...]:
    """``fork()``'s ``silent`` / ``stdio`` as three entries of ``_STDIO``."""
    if stdio is None:
        return ("pipe",) * 3 if silent else ("inherit",) * 3
    if silent:
        raise TypeError("fork() takes silent=True or stdio, not both")
    entries = [stdio] * 3 if isinstance(stdio, str) else [e for e in stdio if e != "ipc"]
    if len(entries) != 3 or not all(isinstance(e, str) and e in _STDIO for e in entries):
        raise ValueError(
            f"stdio must be three of {sorted(_STDIO)} (stdin, stdout, stderr), not {stdio!r}"
        )
    return tuple(entries)


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Hold SIGINT while a child is started; the child starts with it blocked.

    Ctrl-C signals the whole process group, the child too, and a child that
    gets it before its runner is ready would print a ``KeyboardInterrupt``
    traceback from inside its start-up (``patch_all()`` alone takes 0.3 s).
    Blocked, the signal waits: the runner unblocks it once SIGINT ends the
    process quietly. Ours is delivered when the block ends here.
    """
    if not hasattr(_signal, "pthread_sigmask"):
        yield
        return
    # Popen waits cooperatively for the exec, so other greenlets may start
    # children meanwhile: only the first in blocks, only the last out restores
    # (each restoring what it saw would leave SIGINT blocked for good).
    global _sigint_holders, _sigint_mask
    if not _sigint_holders:
        _sigint_mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT})
    _sigint_holders += 1
    try:
        yield
    finally:
        _sigint_holders -= 1
        if not _sigint_holders:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, _sigint_mask)


#: Children being started now, and the signal mask from before the first of them.
_sigint_holders = 0
_sigint_mask: Set[int] = set()


def _make_importable(env: Dict[str, str]) -> None:
    """Let the child import geventfork even from a source checkout."""
    home = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    installed = {os.path.abspath(p) for p in site.getsitepackages()}
    if home in installed:
        return
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = home + (os.pathsep + path if path else "")
