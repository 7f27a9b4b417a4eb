"""The fork server's template process, and the children it forks.

Run as ``python -c "from geventfork._template import main; main()" FD PARENT
MONKEY`` by ``_templates``. Like the runner, it imports nothing of gevent's
until it has patched. It then serves requests on the socket ``FD`` until
its parent (pid ``PARENT``) closes it or dies. Each request is forked with
``clone(CLONE_PARENT)``, so the child is the parent's child; the child
turns itself into what ``python -m geventfork SCRIPT ARGS`` would have been
(fds, cwd, environment, signals, limits, stdio objects) and runs the
runner's own ``main()``.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, NoReturn, Tuple

__all__ = ["main"]

#: ``prctl`` options and ``clone`` flags (``<linux/prctl.h>``, ``<linux/sched.h>``).
PR_SET_PDEATHSIG = 1
CLONE_PARENT = 0x00008000

Request = Dict[str, Any]


def main() -> NoReturn:
    """The template: patch, preload, greet the parent, serve; a child runs its script."""
    from ._main import _take_user_folder

    _take_user_folder()  # as the runner: a child puts its own folder back
    fd, parent, monkey = (int(arg) for arg in sys.argv[1:4])
    _die_with(parent)
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # children start blocked
    if monkey:
        from gevent import monkey as gevent_monkey

        gevent_monkey.patch_all()
    _preload()
    import _socket

    from ._forkserver import encode_frame, send_frame

    sock = _socket.socket(fileno=fd)
    send_frame(sock, encode_frame({"ready": os.getpid()}))
    request, fds = _serve(sock)  # returns in a child only
    _become_child(request, fds)


def _die_with(parent: int) -> None:
    """SIGKILL when the parent dies; exit now if it already has."""
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # it died before the flag was set
        os._exit(0)


def _preload() -> None:
    """Import what a child would import anyway: it then starts in milliseconds."""
    import io  # noqa: F401  what the runner imports before the script
    import runpy  # noqa: F401
    import traceback  # noqa: F401
    import types  # noqa: F401
    import zipfile  # noqa: F401
    from importlib.util import find_spec  # noqa: F401

    import gevent
    import gevent.subprocess  # noqa: F401

    # What the hub imports as a child makes it (its loop, resolver and
    # thread pool classes, 5-10 ms): looked up once, here. The hub itself
    # is not made here: a child makes its own, as a spawned one does.
    for name in ("loop", "resolver", "threadpool"):
        getattr(gevent.config, name)

    from . import _process, _worker, child_process, net  # noqa: F401


def _serve(sock: Any) -> Tuple[Request, List[int]]:
    """Fork a child for each request; return (in the child) its request and fds.

    Exits when the parent closes the socket.
    """
    from ._forkserver import MAX_FDS, MAX_REQUEST, FrameError, encode_frame, recv_frame, send_frame

    while True:
        try:
            request, fds = recv_frame(sock, MAX_REQUEST, MAX_FDS)
        except (EOFError, OSError):
            os._exit(0)
        except (FrameError, ValueError) as exc:
            send_frame(sock, encode_frame({"error": f"bad request: {exc}"}))
            continue
        try:
            pid = _clone() if _valid(request, fds) else -1
        except OSError as exc:
            pid, error = -1, str(exc)
        else:
            error = "bad request"
        if pid == 0:
            sock.close()
            return request, fds
        for fd in fds:
            os.close(fd)
        send_frame(sock, encode_frame({"pid": pid} if pid > 0 else {"error": error}))


def _valid(request: Any, fds: List[int]) -> bool:
    """Whether ``request`` has what a child needs, and one fd for each it names."""
    if not isinstance(request, dict):
        return False
    kinds = request.get("stdio")
    return (
        isinstance(request.get("argv"), list)
        and isinstance(request.get("env"), dict)
        and isinstance(request.get("cwd"), str)
        and isinstance(kinds, list)
        and len(kinds) == 3
        and len(fds) == 1 + kinds.count("fd")
    )


_syscall: Any = None


def _clone() -> int:
    """Fork as ``os.fork()`` does, but with ``CLONE_PARENT``: the child is our parent's.

    The same steps as ``os.fork()`` around the system call (the interpreter's
    and ``os.register_at_fork``'s hooks: locks, random seeds, gevent's
    threading fix-ups). ``ctypes.PyDLL`` keeps the GIL held across it, as
    ``os.fork()`` does.

    Returns:
        0 in the child, the child's pid here.

    Raises:
        OSError: the kernel refused (``EAGAIN``, ``ENOMEM``).
    """
    import ctypes
    import platform
    import signal

    from ._forkserver import CLONE_SYSCALL

    global _syscall
    if _syscall is None:
        _syscall = ctypes.PyDLL(None, use_errno=True).syscall
        _syscall.restype = ctypes.c_long
        _syscall.argtypes = [ctypes.c_long] * 6
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    number = CLONE_SYSCALL[platform.machine()]
    pid = int(_syscall(number, CLONE_PARENT | int(signal.SIGCHLD), 0, 0, 0, 0))
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    error = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(error, os.strerror(error))
    return pid


# -- in the child -------------------------------------------------------------


def _become_child(request: Request, fds: List[int]) -> NoReturn:
    """Make this process what spawning would have made it, then run the runner."""
    channel = _set_fds(request["stdio"], fds)
    env = dict(request["env"])
    env[_channel_variable()] = str(channel)
    _set_process(request, env)
    _set_stdio_objects()
    _set_python(request["argv"])
    from ._main import main as run

    # The runner takes the first entry of sys.path off (the template took
    # its own), and patches unless told not to: the template has.
    if not getattr(sys.flags, "safe_path", False):
        sys.path.insert(0, os.getcwd())
    from ._environ import MONKEY_ENV

    os.environ[MONKEY_ENV] = "0"
    run(request["argv"][3:])


def _channel_variable() -> str:
    from ._environ import CHANNEL_FD_ENV

    return CHANNEL_FD_ENV


def _set_fds(kinds: List[str], fds: List[int]) -> int:
    """Put the child's stdio on 0-2, close every other fd; return the channel's."""
    channel, *streams = fds
    for index, kind in enumerate(kinds):
        if kind == "fd":
            os.dup2(streams.pop(0), index)
        elif kind == "devnull":
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, index)
            os.close(null)
        else:
            os.close(index)
    os.closerange(3, channel)
    os.closerange(channel + 1, _max_fd())
    return channel


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (OSError, ValueError):
        return 1 << 16


def _set_process(request: Request, env: Dict[str, str]) -> None:
    """Working directory, umask, environment, signals and limits as the parent's."""
    import resource
    import signal
    import time

    os.chdir(request["cwd"])
    os.umask(request.get("umask", 0o022))
    os.environ.clear()
    os.environ.update(env)
    time.tzset()  # TZ as the child's environment says
    ignored = set(request.get("ignored", ()))
    from ._forkserver import INHERITED_SIGNALS

    for name in INHERITED_SIGNALS:
        number = getattr(signal, name)
        was_ignored = signal.getsignal(number) == signal.SIG_IGN
        if number in ignored and not was_ignored:
            signal.signal(number, signal.SIG_IGN)
        elif was_ignored and number not in ignored:
            default = signal.default_int_handler if name == "SIGINT" else signal.SIG_DFL
            signal.signal(number, default)
    blocked = {signal.Signals(s) for s in request.get("blocked", ())} | {signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # SIGINT until the runner is ready
    for name, limit in request.get("limits", {}).items():
        which = getattr(resource, name)
        if tuple(limit) != resource.getrlimit(which):
            try:
                resource.setrlimit(which, tuple(limit))
            except (OSError, ValueError):
                pass


def _set_stdio_objects() -> None:
    """``sys.stdin``/``stdout``/``stderr`` as the interpreter makes them at start-up.

    Their buffering follows what the fds are now (a terminal is line
    buffered, a pipe is not), not what the template's were.
    """
    template = sys.stderr or sys.stdout or sys.stdin
    encoding = getattr(template, "encoding", None) or "utf-8"
    # -u or PYTHONUNBUFFERED (the same for the template): stdout is write-through
    unbuffered = bool(getattr(sys.stdout, "write_through", False))
    for index, name in enumerate(("stdin", "stdout", "stderr")):
        stream = _stdio_object(index, name, encoding, unbuffered)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _stdio_object(fd: int, name: str, encoding: str, unbuffered: bool) -> Any:
    import io

    try:
        os.fstat(fd)
    except OSError:
        return None
    unbuffered = unbuffered and fd != 0  # stdin is buffered even then
    raw_or_buffer: Any = io.open(
        fd, "rb" if fd == 0 else "wb", 0 if unbuffered else -1, closefd=False
    )
    raw = raw_or_buffer if unbuffered else raw_or_buffer.raw
    raw.name = f"<{name}>"
    old = getattr(sys, name, None)
    errors = "backslashreplace" if fd == 2 else getattr(old, "errors", None) or "strict"
    stream = io.TextIOWrapper(
        raw_or_buffer,
        encoding=getattr(old, "encoding", None) or encoding,
        errors=errors,
        newline="\n",
        line_buffering=not unbuffered and (fd == 2 or os.isatty(fd)),
        write_through=unbuffered,
    )
    stream.mode = "r" if fd == 0 else "w"  # type: ignore[misc]
    return stream


def _set_python(argv: List[str]) -> None:
    """The interpreter's own view of how it was started, and this process's pid."""
    if hasattr(sys, "orig_argv"):
        sys.orig_argv = list(argv)
    _set_cmdline(argv)
    from ._process import process

    process.pid = os.getpid()
    import gevent

    from gevent._hub_local import get_hub_if_exists

    if get_hub_if_exists() is not None:  # none is made by the template; if one was
        gevent.reinit()


def _set_cmdline(argv: List[str]) -> None:
    """Show ``argv`` in ``/proc/PID/cmdline`` (``ps``), as a spawned child would.

    The command line is the template's memory between the kernel's
    ``arg_start`` and ``arg_end``; the template was given a padding argument
    so that a child's fits. What does not fit is cut; the rest is NULs.
    """
    import ctypes

    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
        start, end = int(fields[45]), int(fields[46])  # fields 48 and 49 of proc(5)
    except (OSError, ValueError, IndexError):
        return
    text = b"\0".join(os.fsencode(arg) for arg in argv)[: end - start - 1]
    ctypes.memmove(start, text.ljust(end - start, b"\0"), end - start)
