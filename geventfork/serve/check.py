"""The reload's check: does the target still load, in a fresh process?

Run before a reload (SIGHUP) replaces any worker: a target that no longer
imports keeps the running workers.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any, Optional, Set

__all__ = ["check_target", "CHECK_TIMEOUT"]

#: Seconds the check (a fresh interpreter, patched, importing the target) may take.
CHECK_TIMEOUT = 60.0
#: The time, pid and level that start a log line (``log.FORMAT``), taken off
#: the check's line before it goes into the parent's.
LOG_PREFIX = re.compile(r"^(\[[^]]*\] \[\d+\] \[[A-Z]+\] |geventfork serve: error: )")


def check_target(
    target: str, handler: bool, cwd: str, running: Optional[Set[Any]] = None
) -> Optional[str]:
    """Load ``target`` in a fresh process (``geventfork serve --check``).

    Args:
        target: TARGET, as given.
        handler: ``--handler``.
        cwd: the directory to load it from (the server's, after ``--chdir``).
        running: holds the check's ``Popen`` while it runs, so that a server
            that stops meanwhile can kill it.

    Returns:
        None if it loads, else one line saying what went wrong (the check's last).
    """
    argv = [sys.executable, "-m", "geventfork", "serve", "--check", target]
    if handler:
        argv.append("--handler")
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        return f"cannot run the check: {exc}"
    if running is not None:
        running.add(proc)
    try:
        out, err = proc.communicate(timeout=CHECK_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return f"loading {target} took more than {CHECK_TIMEOUT:g} s"
    finally:
        if running is not None:
            running.discard(proc)
    if proc.returncode == 0:
        return None
    text = (err + out).decode("utf-8", "replace")
    lines = [LOG_PREFIX.sub("", line).strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else f"the check exited with status {proc.returncode}"
