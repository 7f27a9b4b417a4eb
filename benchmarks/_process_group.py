"""The processes the benchmarks start: each in a session of its own, always stopped.

Every command runs as the leader of a new session, so that it and whatever
it forks share one process group that is signalled as a whole, and Ctrl-C at
the terminal reaches the runner only (which then stops them all, in order).
"""

from __future__ import annotations

import functools
import os
import resource
import signal
import subprocess
import time
from typing import Optional

__all__ = ["ProcessGroup", "stop_all"]

#: Seconds a group gets to exit after SIGTERM before it is sent SIGKILL.
GRACE = 5.0
_TICKS = os.sysconf("SC_CLK_TCK")
_live: set = set()  # the groups not yet stopped


class ProcessGroup:
    """A command started in a new session, its stdout and stderr in files.

    Args:
        argv: the command.
        out_path: the file stdout goes to.
        err_path: the file stderr goes to.
        nofile: its limit on open files (RLIMIT_NOFILE); None keeps ours.
        cwd: the folder it starts in; None keeps ours.
    """

    def __init__(
        self,
        argv: list,
        out_path: str,
        err_path: str,
        nofile: Optional[int] = None,
        cwd: Optional[str] = None,
    ) -> None:
        self.argv = argv
        self.out_path = out_path
        self.err_path = err_path
        limit = None if nofile is None else functools.partial(_limit_open_files, nofile)
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=limit,
                cwd=cwd,
            )
        self.pgid = self.popen.pid
        _live.add(self)

    def output(self) -> str:
        """Everything the command wrote to stdout so far."""
        with open(self.out_path, errors="replace") as f:
            return f.read()

    def error_tail(self, lines: int = 6) -> str:
        """The last ``lines`` lines of its stderr, for error reports."""
        with open(self.err_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip()

    def running(self) -> bool:
        """Whether the leader has not exited."""
        return self.popen.poll() is None

    def wait(self, timeout: float) -> int:
        """Wait for the leader to exit; return its status.

        Raises:
            subprocess.TimeoutExpired: still running after ``timeout`` seconds.
        """
        return self.popen.wait(timeout)

    def cpu_seconds(self) -> dict:
        """User+system CPU seconds of each live process of the group, by pid."""
        return {pid: cpu for pid, cpu in _group_members(self.pgid)}

    def open_fds(self) -> int:
        """How many files the live processes of the group hold open, in all."""
        total = 0
        for pid, _cpu in _group_members(self.pgid):
            try:
                total += len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                pass  # it exited meanwhile
        return total

    def stop(self) -> None:
        """SIGTERM the group, SIGKILL whatever is left after GRACE, reap the leader."""
        if self not in _live:
            return
        try:
            self._signal_until_gone(signal.SIGTERM, GRACE)
            self._signal_until_gone(signal.SIGKILL, GRACE)
        finally:
            _live.discard(self)

    def _signal_until_gone(self, signum: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.popen.poll()
        if not _group_members(self.pgid):
            return  # never signal a group that is gone: its id could be reused
        try:
            os.killpg(self.pgid, signum)
        except ProcessLookupError:
            return
        while time.monotonic() < deadline:
            self.popen.poll()
            if not _group_members(self.pgid):
                return
            time.sleep(0.02)


def stop_all() -> None:
    """Stop every group still running (on exit, Ctrl-C or failure)."""
    for group in list(_live):
        group.stop()


def _limit_open_files(nofile: int) -> None:
    """In the child, before exec: limit open files to ``nofile``, soft and hard.

    Both, because Node raises its soft limit to the hard one at startup.
    """
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        nofile = min(nofile, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))


def _group_members(pgid: int) -> list:
    """``(pid, cpu_seconds)`` of each live (not zombie) process in group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(entry)
        # fields[0] is field 3 of proc(5): state; 2: pgrp; 11, 12: utime, stime.
        if fields and int(fields[2]) == pgid and fields[0] not in "ZX":
            members.append((int(entry), (int(fields[11]) + int(fields[12])) / _TICKS))
    return sorted(members, key=lambda m: m[0] != pgid)  # the leader first


def _stat_fields(pid: str) -> Optional[list]:
    """The fields of /proc/PID/stat after the command name, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()
