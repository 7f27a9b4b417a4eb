"""``fork()`` and ``ChildProcess``: Node's ``child_process.fork``, on gevent."""
from __future__ import annotations

import os
import signal as _signal
import site
import sys
from typing import Any, Optional, Sequence

import gevent
from gevent import subprocess

from . import _wire
from ._channel import Channel, ChannelOwner
from ._main import CHANNEL_FD_ENV, MAX_MESSAGE_SIZE_ENV, MONKEY_ENV, SERIALIZATION_ENV
from ._serialization import by_name

__all__ = ["fork", "ChildProcess"]

#: The largest payload a frame's header can announce (its size field is a u32).
_MAX_PAYLOAD = 0xFFFFFFFF


class ChildProcess(ChannelOwner):
    """A child started by ``fork()``; the parent's handle on it.

    Events: ``'spawn'``, ``'message'(message, handle)``, ``'disconnect'``,
    ``'exit'(code, signal)``, ``'close'(code, signal)``, ``'error'(err)``.
    ``'close'`` follows once the child has exited and the channel has closed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pid: Optional[int] = None
        #: The exit status, or None (still running, or killed by a signal).
        self.exit_code: Optional[int] = None
        #: The name of the signal that ended the child (``"SIGKILL"``), or None.
        self.signal_code: Optional[str] = None
        #: True once ``kill()`` delivered a signal.
        self.killed = False
        self.spawnargs: list = []
        self.stdin: Any = None
        self.stdout: Any = None
        self.stderr: Any = None
        self._popen: Optional[subprocess.Popen] = None
        self._timer: Any = None  # the loop timer behind ``timeout``
        self._exited = False
        self._disconnected = False
        self._referenced = True

    def kill(self, signal: int = _signal.SIGTERM) -> bool:
        """Send ``signal``; return whether it was delivered (Node's ``kill``)."""
        if self._popen is None or self._exited or self._popen.returncode is not None:
            return False  # exited (reaped: its pid may be reused)
        try:
            os.kill(self._popen.pid, signal)
        except ProcessLookupError:
            return False
        self.killed = True
        return True

    def wait(self, timeout: Optional[float] = None) -> int:
        """Block the calling greenlet until the child exits.

        Returns:
            The exit code, or minus the signal number when a signal ended it
            (as ``subprocess`` does).

        Raises:
            subprocess.TimeoutExpired: still running after ``timeout`` seconds.
            ChildProcessError: the child never started.
        """
        if self._popen is None:
            raise ChildProcessError("the child process never started")
        returncode = self._popen.wait(timeout)
        self._record_exit(returncode)  # 'exit' may not have been emitted yet
        return returncode

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
        return f"<ChildProcess pid={self.pid} exit_code={self.exit_code} signal_code={self.signal_code}>"

    # -- spawning and exit ------------------------------------------------

    def _spawn(self, args: list, env: dict, cwd: Any, silent: bool, codec: Any, max_size: int) -> None:
        import _socket

        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        env[CHANNEL_FD_ENV] = str(theirs.fileno())
        pipe = subprocess.PIPE if silent else None
        self.spawnargs = args
        try:
            self._popen = subprocess.Popen(
                args, pass_fds=(theirs.fileno(),), cwd=cwd, env=env,
                stdin=pipe, stdout=pipe, stderr=pipe,
            )
        except OSError as exc:
            ours.close()
            gevent.spawn(self.emit, "error", exc)
            return
        finally:
            theirs.close()
        self.pid = self._popen.pid
        self.stdin, self.stdout, self.stderr = (
            self._popen.stdin, self._popen.stdout, self._popen.stderr,
        )
        gevent.spawn(self.emit, "spawn")
        self.channel = Channel(ours, self, codec, max_size)
        self._popen.rawlink(lambda popen: gevent.spawn(self._on_exit, popen.returncode))

    def _on_exit(self, returncode: int) -> None:
        self._exited = True
        if self._timer is not None:
            self._timer.stop()
        self._record_exit(returncode)
        self.emit("exit", self.exit_code, self.signal_code)
        self._maybe_close()

    def _record_exit(self, returncode: int) -> None:
        if returncode < 0:
            self.signal_code = _signal.Signals(-returncode).name
        else:
            self.exit_code = returncode

    def _channel_closed(self) -> None:
        self._disconnected = True
        super()._channel_closed()
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self._exited and self._disconnected:
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
    module: str,
    args: Sequence[Any] = (),
    *,
    exec_path: Optional[str] = None,
    exec_argv: Sequence[str] = (),
    cwd: Optional[str] = None,
    env: Optional[dict] = None,
    silent: bool = False,
    serialization: str = "json",
    monkey: bool = True,
    kill_signal: int = _signal.SIGTERM,
    timeout: Optional[float] = None,
    max_message_size: int = _wire.MAX_FRAME_SIZE,
) -> ChildProcess:
    """Start ``module`` in a new Python process with an IPC channel to it.

    Like Node's ``child_process.fork``: the child runs under
    ``python -m geventfork`` (patched with gevent unless ``monkey=False``)
    and talks back through ``geventfork.process``.

    Args:
        module: a path to a Python file, or a dotted module name.
        args: the script's arguments (``process.argv[2:]`` in the child).
        exec_path: the Python to run (default ``sys.executable``).
        exec_argv: options for that Python, before ``-m geventfork``.
        cwd: the child's working directory.
        env: the child's environment (default: ours).
        silent: pipe the child's stdin/stdout/stderr to ``child.stdin`` /
            ``child.stdout`` / ``child.stderr`` instead of inheriting ours.
        serialization: ``"json"`` or ``"pickle"``.
        monkey: patch the child with ``gevent.monkey.patch_all()``.
        kill_signal: the signal ``timeout`` kills with.
        timeout: seconds after which the child is sent ``kill_signal``.
        max_message_size: the largest message either end accepts, in bytes.

    Returns:
        The ``ChildProcess``. A failure to start is emitted as ``'error'``.

    Raises:
        ValueError: an unknown ``serialization``, or a ``max_message_size``
            a frame cannot announce (1 to 4 GiB - 1: its size field is a u32).
    """
    codec = by_name(serialization)
    if not 0 < max_message_size <= _MAX_PAYLOAD:
        raise ValueError(
            f"max_message_size must be from 1 to {_MAX_PAYLOAD} bytes, not {max_message_size}"
        )
    child_env = dict(os.environ if env is None else env)
    child_env[SERIALIZATION_ENV] = codec.name
    child_env[MONKEY_ENV] = "1" if monkey else "0"
    child_env[MAX_MESSAGE_SIZE_ENV] = str(max_message_size)
    _make_importable(child_env)
    argv = [exec_path or sys.executable, *exec_argv, "-m", "geventfork", os.fspath(module)]
    child = ChildProcess()
    child._spawn(argv + [str(a) for a in args], child_env, cwd, silent, codec, max_message_size)
    if timeout is not None and child._popen is not None:
        child._timer = gevent.get_hub().loop.timer(timeout)
        child._timer.start(child.kill, kill_signal)
    return child


def _make_importable(env: dict) -> None:
    """Let the child import geventfork even from a source checkout."""
    home = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    installed = {os.path.abspath(p) for p in site.getsitepackages()}
    if home in installed:
        return
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = home + (os.pathsep + path if path else "")
