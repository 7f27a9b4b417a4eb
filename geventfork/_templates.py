"""The fork server's templates, as the parent keeps them: start, ask, drop.

See ``_forkserver`` for the design. Every failure here ends in None (the
caller spawns instead) and drops the template; the next ``fork()`` that
needs one starts a new one.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import _socket
import gevent
from gevent import subprocess
from gevent.event import Event
from gevent.lock import Semaphore

from ._forkserver import (
    MAX_REPLY,
    MAX_TEMPLATES,
    REPLY_TIMEOUT,
    START_TIMEOUT,
    FrameError,
    encode_frame,
    recv_frame,
    send_frame,
    startup_key,
)
from ._environ import MONKEY_ENV

__all__ = ["Template", "template_for", "running", "drop_all", "end_all"]

#: The command a template runs (after the Python): ``-c`` leaves ``sys.path``
#: as ``-m`` would, but for its first entry, which both runners take off.
TEMPLATE_CODE = "from geventfork._template import main; main()"
#: Room on the template's command line for a child's (``_template._set_cmdline``).
CMDLINE_ROOM = 4096

Key = Tuple[Any, ...]
_templates: "OrderedDict[Key, Template]" = OrderedDict()


class Template:
    """One template process and our end of its socket pair."""

    def __init__(self, key: Key, env: Dict[str, str], cwd: str) -> None:
        """Start the template; ``fork()`` waits for it to be ready (``ready``).

        Raises:
            OSError: it could not be started.
        """
        self.key = key
        self.dead = False
        self._ready = Event()
        self._lock = Semaphore()
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.sock = ours
        try:
            self.popen = self._start(theirs.fileno(), env, cwd)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.pid = self.popen.pid
        _unref_child(self.pid)  # a template keeps no one alive
        self.popen.rawlink(lambda _popen: self.drop())  # type: ignore[attr-defined]
        gevent.spawn(self._wait_ready)

    def _start(self, fd: int, env: Dict[str, str], cwd: str) -> subprocess.Popen[bytes]:
        from .child_process import _sigint_blocked

        monkey = env.get(MONKEY_ENV, "1") != "0"
        argv = [sys.executable, "-c", TEMPLATE_CODE, str(fd), str(os.getpid()), str(int(monkey))]
        argv.append(" " * CMDLINE_ROOM)
        # What start-up reads, nothing else: no child's own variables (a
        # secret given to one child) linger in a long-lived process.
        template_env = dict(startup_key(env))
        if "PATH" in env:
            template_env["PATH"] = env["PATH"]
        with _sigint_blocked():  # the template keeps SIGINT blocked for good
            return subprocess.Popen(
                argv,
                pass_fds=(fd,),
                cwd=cwd,
                env=template_env,
                # Not even our stderr: a template holding a pipe open would
                # keep its reader from EOF after we exit. One that fails to
                # start costs a spawn, which says what is wrong.
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def _wait_ready(self) -> None:
        """Wait (cooperatively) for the template's first message: it is ready."""
        from gevent.socket import wait_read

        try:
            wait_read(self.sock.fileno(), timeout=START_TIMEOUT)
            self.sock.settimeout(REPLY_TIMEOUT)
            message, _ = recv_frame(self.sock, MAX_REPLY)
            if not isinstance(message, dict) or message.get("ready") != self.pid:
                raise FrameError(f"not a template's greeting: {message!r}")
        except (OSError, EOFError, FrameError, ValueError):
            self.drop()
        finally:
            self._ready.set()
            if self.dead:
                self.sock.close()

    def fork(self, request: Dict[str, Any], fds: Sequence[int]) -> Optional[int]:
        """Have the template fork a child; return its pid (None: spawn instead).

        The reply is read with a blocking read, and the caller watches the
        pid before it yields: see the module's docstring of ``_forkserver``.
        """
        self._ready.wait()
        with self._lock:
            if self.dead:
                return None
            try:
                send_frame(self.sock, encode_frame(request), fds)
                reply, _ = recv_frame(self.sock, MAX_REPLY)
            except (OSError, EOFError, FrameError, ValueError):
                self.drop()
                return None
        pid = reply.get("pid") if isinstance(reply, dict) else None
        if not isinstance(pid, int) or pid <= 0:
            return None  # the template could not fork (EAGAIN, ENOMEM): spawn
        return pid

    def drop(self) -> None:
        """Forget this template and end it (closing its socket is enough)."""
        if self.dead:
            return
        self.dead = True
        if _templates.get(self.key) is self:
            del _templates[self.key]
        if self._ready.is_set():  # else _wait_ready closes it: it may be waiting on it
            self.sock.close()
        if self.popen.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)  # it may hang: never wait for it
            except ProcessLookupError:
                pass


def _unref_child(pid: int) -> None:
    import gevent.os

    watcher = getattr(gevent.os, "_watched_children", {}).get(pid)
    if watcher is not None and not isinstance(watcher, tuple):
        watcher.ref = False


def template_for(env: Dict[str, str], cwd: str) -> Optional[Template]:
    """The template for a child with this environment, started if need be."""
    key = (sys.executable, env.get(MONKEY_ENV, "1") != "0", os.getpgrp(), startup_key(env))
    template = _templates.get(key)
    if template is not None and not template.dead:
        _templates.move_to_end(key)
        return template
    while len(_templates) >= MAX_TEMPLATES:
        next(iter(_templates.values())).drop()
    try:
        template = Template(key, env, cwd)
    except OSError:
        return None
    _templates[key] = template
    global _ended_at_exit
    if not _ended_at_exit:
        _ended_at_exit = True
        atexit.register(end_all)
    return template


def running() -> List[Tuple[int, int]]:
    """``(pid, fd)`` of each template kept now."""
    return [(t.pid, t.sock.fileno()) for t in _templates.values() if not t.dead]


def drop_all() -> None:
    """End every template (the next ``fork()`` starts what it needs)."""
    for template in list(_templates.values()):
        template.drop()


def end_all() -> None:
    """End every template and reap it, blocking (at exit: the event loop is done).

    So that a process is gone with its templates when it exits normally,
    for whoever waits for its process group or reads its pipes. (Killed,
    the kernel ends them, ``PR_SET_PDEATHSIG``, a moment later.)
    """
    templates = list(_templates.values())
    drop_all()
    for template in templates:
        try:
            os.waitid(os.P_PID, template.pid, os.WEXITED)
        except ChildProcessError:  # reaped already
            pass


_ended_at_exit = False


def _forget_all() -> None:
    """In a child of ``os.fork()``: these templates fork for our parent, not us."""
    for template in list(_templates.values()):
        template.dead = True
        template.sock.close()
    _templates.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_all)
