"""The fork server: children forked from a warm template instead of spawned.

Spawning a child costs a new interpreter, ``import gevent`` and
``patch_all()`` (100-400 ms here). A template process pays that once: it
imports gevent, patches, imports geventfork, and then forks children on
request, each of which runs its script exactly as ``python -m geventfork``
would (``_template.py`` is the template's side).

Design (Linux only):

- One template per distinct start-up: the Python, ``monkey``, the process
  group, and the environment variables an interpreter reads as it starts
  (``PYTHON*``, ``GEVENT*``, locale, ``HOME``, ``LD_*``). It is started on
  the first ``fork()`` that needs it, with those variables only (no
  child's own lingers there), ``/dev/null`` as its stdio, and SIGINT
  blocked for good (its children start with it blocked, as spawned ones).
- The template forks with ``clone(CLONE_PARENT)``: the new process is our
  child, not the template's, from its first instruction: ``wait()``,
  ``kill()`` and ``'exit'`` work as for a spawned child, ``os.getppid()``
  is ours, and no subreaper flag makes every orphaned descendant ours.
- We reap our children through gevent's child watchers, whose handler
  reaps any child (``waitpid(-1)``): a child that exited before we watch
  its pid would lose its status. So the reply carrying the pid is read
  with a blocking read (the template's fork takes about a millisecond)
  and the pid watched before the event loop runs again.
- A request is one frame (``u32`` length + JSON) whose first byte carries
  the child's fds (``SCM_RIGHTS``): its end of the channel and its stdio.
  Sizes are bounded; the template trusts only us, the one holder of the
  other end of its socket pair.
- The template dies with us: ``PR_SET_PDEATHSIG`` (SIGKILL), and EOF on
  its socket. A template that died, hung or refused is dropped, and that
  ``fork()`` spawns instead: the fork server never fails a ``fork()``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import signal
import struct
import sys
from array import array
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple

import _socket

__all__ = [
    "available",
    "fork_child",
    "Adopted",
    "templates",
    "encode_frame",
    "send_frame",
    "recv_frame",
]

#: The frame header: the JSON payload's size, big-endian.
HEADER = struct.Struct(">I")
#: The largest request (its environment, mostly): a bound, not a need.
MAX_REQUEST = 4 * 1024 * 1024
#: The largest reply or readiness message.
MAX_REPLY = 4096
#: The most fds one request carries: the channel and three stdio streams.
MAX_FDS = 4
#: Seconds a template may take to start (an interpreter, gevent, patch_all():
#: 0.2-1 s here); the fork()s waiting for it then spawn.
START_TIMEOUT = 10.0
#: Seconds a template may take to answer a request (it forks in about 1 ms).
REPLY_TIMEOUT = 5.0
#: Templates kept at once; the least recently used goes first.
MAX_TEMPLATES = 4
#: ``clone()``'s syscall number where the template knows it.
CLONE_SYSCALL = {"x86_64": 56, "aarch64": 220}
#: Environment variables an interpreter (or gevent) reads as it starts:
#: two children that differ in one of them need two templates.
STARTUP_PREFIXES = ("PYTHON", "GEVENT", "LC_", "LD_", "MALLOC_")
STARTUP_NAMES = ("LANG", "LANGUAGE", "HOME")
#: Variables of ours that say nothing about start-up.
OWN_PREFIX = "GEVENTFORK_"
#: Signals whose ignored disposition a child inherits from us, as through exec.
INHERITED_SIGNALS = tuple(
    s
    for s in (
        "SIGINT",
        "SIGHUP",
        "SIGTERM",
        "SIGQUIT",
        "SIGUSR1",
        "SIGUSR2",
        "SIGALRM",
        "SIGCHLD",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGWINCH",
    )
    if hasattr(signal, s)
)
#: Resource limits a child gets as ours are now (a spawned child inherits them).
LIMITS = tuple(
    name
    for name in (
        "RLIMIT_NOFILE",
        "RLIMIT_CORE",
        "RLIMIT_AS",
        "RLIMIT_DATA",
        "RLIMIT_STACK",
        "RLIMIT_NPROC",
        "RLIMIT_CPU",
        "RLIMIT_FSIZE",
        "RLIMIT_MEMLOCK",
    )
    if hasattr(resource, name)
)


class FrameError(Exception):
    """A frame over its bound, cut short, or not JSON."""


# -- the frames (no I/O but the socket given) ---------------------------------


def encode_frame(message: Dict[str, Any]) -> bytes:
    """``message`` as one frame: its JSON's size (``u32``), then the JSON."""
    payload = json.dumps(message, separators=(",", ":")).encode()
    return HEADER.pack(len(payload)) + payload


def send_frame(sock: _socket.socket, frame: bytes, fds: Sequence[int] = ()) -> None:
    """Send ``frame`` on a blocking socket, ``fds`` with its first byte only."""
    sent = 0
    if fds:
        ancillary = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array("i", fds).tobytes())]
        sent = sock.sendmsg([frame], ancillary)
        if sent == 0:
            raise FrameError("nothing sent")
    sock.sendall(frame[sent:])


def recv_frame(sock: _socket.socket, limit: int, max_fds: int = 0) -> Tuple[Any, List[int]]:
    """Read one frame from a blocking socket: ``(message, fds)``.

    The fds are close-on-exec; on any error they are closed first.

    Raises:
        EOFError: the peer closed the socket between frames.
        FrameError: a frame over ``limit``, cut short, carrying more fds
            than ``max_fds``, or not JSON.
        OSError: from the socket (a timeout included).
    """
    space = _socket.CMSG_SPACE(max_fds * 4) if max_fds else 0
    flags = getattr(_socket, "MSG_CMSG_CLOEXEC", 0)
    data, ancillary, msg_flags, _ = sock.recvmsg(HEADER.size, space, flags)
    fds = _fds(ancillary)
    try:
        if not data:
            raise EOFError
        if msg_flags & getattr(_socket, "MSG_CTRUNC", 0) or len(fds) > max_fds:
            raise FrameError("too many fds")
        (size,) = HEADER.unpack(data + _recv_exactly(sock, HEADER.size - len(data)))
        if size > limit:
            raise FrameError(f"a frame of {size} bytes (at most {limit})")
        return json.loads(_recv_exactly(sock, size)), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _fds(ancillary: List[Tuple[int, int, bytes]]) -> List[int]:
    fds = array("i")
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return fds.tolist()


def _recv_exactly(sock: _socket.socket, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise FrameError("cut short by EOF")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


# -- the parent's side --------------------------------------------------------


def available() -> bool:
    """Whether children can be forked from a template here: Linux, a known
    ``clone``, and Python 3.10 or newer (on 3.9, whose newest gevent is
    25.9.1, a forked child's event loop fails: ``epoll_wait: Bad file
    descriptor``; children are spawned there)."""
    return (
        sys.version_info >= (3, 10)
        and sys.platform.startswith("linux")
        and platform.machine() in CLONE_SYSCALL
    )


class Adopted:
    """A child the template forked for us, as ``gevent.subprocess.Popen`` shows one.

    The child is ours (``CLONE_PARENT``); it is reaped by gevent's child
    watcher, as a ``Popen``'s is, so ``os.waitpid`` (patched) works on it too.
    """

    def __init__(
        self, pid: int, stdin: Optional[IO[bytes]], stdout: Optional[IO[bytes]], stderr: Any
    ) -> None:
        self.pid = pid
        self.returncode: Optional[int] = None
        self.stdin = stdin
        self.stdout = stdout
        self.stderr: Optional[IO[bytes]] = stderr
        self._links: List[Callable[[Adopted], object]] = []
        _watch_child(pid, self._on_child)

    def rawlink(self, callback: Callable[[Adopted], object]) -> None:
        """Have ``callback(self)`` called, in the hub, once the child exited."""
        if self.returncode is None:
            self._links.append(callback)
        else:
            import gevent

            gevent.get_hub().loop.run_callback(callback, self)

    def poll(self) -> Optional[int]:
        """The exit status (minus the signal number), or None while it runs."""
        return self.returncode

    def _on_child(self, watcher: Any) -> None:
        status = watcher.rstatus
        if os.WIFSIGNALED(status):
            self.returncode = -os.WTERMSIG(status)
        else:
            self.returncode = os.WEXITSTATUS(status)
        links, self._links = self._links, []
        for callback in links:
            callback(self)


def _watch_child(pid: int, callback: Callable[[Any], None]) -> None:
    """Watch ``pid`` as ``gevent.subprocess`` does, so patched ``os.waitpid`` knows it."""
    import gevent
    import gevent.os

    watch = getattr(gevent.os, "_watch_child", None)
    if watch is not None:
        watch(pid, callback, ref=True)
        return
    watcher = gevent.get_hub().loop.child(pid, ref=True)

    def on_child() -> None:
        watcher.stop()
        callback(watcher)

    watcher.start(on_child)


def fork_child(
    argv: List[str],
    env: Dict[str, str],
    cwd: Optional[str],
    stdio: Tuple[str, ...],
    channel_fd: int,
) -> Optional[Adopted]:
    """Have a template fork ``argv`` (``[python, "-m", "geventfork", SCRIPT, ...]``).

    Args:
        argv: the command line a spawned child would have.
        env: its environment (the channel's variable included).
        cwd: its working directory, or None for ours.
        stdio: ``"pipe"``, ``"inherit"`` or ``"ignore"`` for each stream.
        channel_fd: the child's end of the channel.

    Returns:
        The child, or None when it must be spawned instead (no template
        could be had, or it failed this request); nothing was started then.
    """
    directory = os.path.abspath(cwd) if cwd is not None else _getcwd()
    if directory is None or not os.path.isdir(directory):
        return None  # spawning says what is wrong
    from ._templates import template_for

    template = template_for(env, directory)
    if template is None:
        return None
    try:
        streams = _Stdio(stdio)
    except OSError:  # out of fds: spawning reports it
        return None
    try:
        request = _request(argv, env, directory, streams.kinds)
        pid = template.fork(request, [channel_fd, *streams.theirs])
    finally:
        streams.close_theirs()
    if pid is None:
        streams.close_ours()
        return None
    return Adopted(pid, *streams.files())


def _getcwd() -> Optional[str]:
    try:
        return os.getcwd()
    except OSError:  # deleted: spawning reports it
        return None


def _request(argv: List[str], env: Dict[str, str], cwd: str, kinds: List[str]) -> Dict[str, Any]:
    """What the template needs to make the child a spawned child's double."""
    umask = os.umask(0o022)
    os.umask(umask)
    return {
        "argv": argv,
        "env": env,
        "cwd": cwd,
        "stdio": kinds,
        "umask": umask,
        "ignored": [
            int(getattr(signal, name))
            for name in INHERITED_SIGNALS
            if signal.getsignal(getattr(signal, name)) == signal.SIG_IGN
        ],
        "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, ())),
        "limits": {name: resource.getrlimit(getattr(resource, name)) for name in LIMITS},
    }


class _Stdio:
    """The child's stdin, stdout and stderr, as fds to pass and our pipe ends."""

    def __init__(self, stdio: Tuple[str, ...]) -> None:
        #: per stream: "fd" (the next of ``theirs``), "devnull" or "closed"
        self.kinds: List[str] = []
        self.theirs: List[int] = []
        self.ours: List[Optional[int]] = []
        try:
            for index, entry in enumerate(stdio):
                self._add(index, entry)
        except OSError:
            self.close_theirs()
            self.close_ours()
            raise

    def _add(self, index: int, entry: str) -> None:
        if entry == "ignore":
            self.kinds.append("devnull")
            self.ours.append(None)
        elif entry == "inherit":
            open_ = _is_open(index)
            self.kinds.append("fd" if open_ else "closed")
            if open_:
                self.theirs.append(os.dup(index))
            self.ours.append(None)
        else:
            read, write = os.pipe()
            child, parent = (read, write) if index == 0 else (write, read)
            self.kinds.append("fd")
            self.theirs.append(child)
            self.ours.append(parent)

    def close_theirs(self) -> None:
        for fd in self.theirs:
            os.close(fd)
        self.theirs = []

    def close_ours(self) -> None:
        for fd in self.ours:
            if fd is not None:
                os.close(fd)
        self.ours = [None, None, None]

    def files(self) -> Tuple[Any, Any, Any]:
        """Our ends as ``gevent.subprocess.Popen`` makes them (``FileObject``)."""
        from gevent.fileobject import FileObject

        stdin, stdout, stderr = (
            None if fd is None else FileObject(fd, "wb" if index == 0 else "rb", -1)
            for index, fd in enumerate(self.ours)
        )
        return stdin, stdout, stderr


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def templates() -> List[Tuple[int, int]]:
    """``(pid, fd)`` of each template running now: its pid and our end of its socket."""
    from ._templates import running

    return running()


def startup_key(env: Dict[str, str]) -> Tuple[Tuple[str, str], ...]:
    """The part of ``env`` an interpreter reads as it starts, sorted."""
    return tuple(
        sorted(
            (name, value)
            for name, value in env.items()
            if not name.startswith(OWN_PREFIX)
            and (name.startswith(STARTUP_PREFIXES) or name in STARTUP_NAMES)
        )
    )
