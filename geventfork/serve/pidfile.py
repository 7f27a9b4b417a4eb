"""``--pid FILE``: the parent's process id, for scripts that signal it."""

from __future__ import annotations

import os
from typing import Optional

__all__ = ["PidFile", "PidFileError"]


class PidFileError(Exception):
    """The pid file cannot be written: ``str()`` is the one line to show."""


class PidFile:
    """The file at ``path`` holding this process's id while it serves.

    Args:
        path: where (relative to the current directory, after ``--chdir``).
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._written = False

    def write(self) -> None:
        """Write our pid, unless the file names another process that runs.

        Raises:
            PidFileError: another server runs, or the file cannot be written.
        """
        other = _running_pid(self.path)
        if other is not None:
            raise PidFileError(f"pid file {self.path} names a running process ({other})")
        temp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(temp, "w") as f:
                f.write(f"{os.getpid()}\n")
            os.replace(temp, self.path)  # readers never see a half-written file
        except OSError as exc:
            _unlink(temp)
            raise PidFileError(
                f"cannot write pid file {self.path}: {exc.strerror or exc}"
            ) from None
        self._written = True

    def remove(self) -> None:
        """Remove the file, if we wrote it and it still holds our pid."""
        if self._written and _read_pid(self.path) == os.getpid():
            _unlink(self.path)
        self._written = False


def _read_pid(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _running_pid(path: str) -> Optional[int]:
    """The pid in the file at ``path`` if that process runs (and is not us)."""
    pid = _read_pid(path)
    if pid is None or pid <= 0 or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # it runs, as another user
        return pid
    return pid


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
