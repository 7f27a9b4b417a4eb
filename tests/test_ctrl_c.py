"""Ctrl-C: SIGINT to the whole process group, at any moment, ends every process quietly.

A parent under ``python -m geventfork`` forks children one after another;
the test signals the group at several moments, including while the parent
is inside ``patch_all()`` and while children are starting up, then checks
that stderr (shared by all of them) holds no traceback and that every
process of the group is gone within a bound.

The moments count from when the runner takes over SIGINT, seen from
outside in ``/proc/PID/status``: CPython installs its own handler early in
its start-up (``SigCgt`` gains SIGINT) and the runner's first lines drop
it (``SigCgt`` loses it). Before that, the interpreter is still importing
``site`` (10-150 ms here): a SIGINT then is CPython's business (it prints a
``KeyboardInterrupt`` traceback for any script), except in forked children,
which start with SIGINT blocked. Moment ``"exec"`` signals right after the
parent's ``exec``, before CPython's handler exists.
"""
import os
import signal
import subprocess
import sys
import time

import gevent
import pytest

from helpers import CHILDREN_DIR, python_env

#: Seconds after which every process of the group must be gone.
BOUND = 5.0


def sigint_caught(pid):
    """Whether ``pid`` has a handler for SIGINT (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except OSError:
        return None
    return None


def wait_for(pid, caught, what):
    """Poll, without yielding, until ``sigint_caught(pid) == caught``."""
    deadline = time.monotonic() + 10
    while sigint_caught(pid) is not caught:
        if time.monotonic() > deadline:
            pytest.fail(f"never saw {what}")
        time.sleep(0.0005)


def group(pgid):
    """The live (non-zombie) processes of process group ``pgid``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(name))
    return found


@pytest.mark.parametrize("moment", ["exec", 0.0, 0.1, 0.3, 0.6, 0.9, 1.2])
def test_ctrl_c_at_any_moment(popen, moment):
    parent = subprocess.Popen(
        [sys.executable, "-m", "geventfork", os.path.join(CHILDREN_DIR, "ctrl_c_parent.py")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=python_env(),
        start_new_session=True,  # a process group of its own, as a shell gives a job
    )
    popen.append(parent)
    try:
        if moment != "exec":
            wait_for(parent.pid, True, "CPython install its SIGINT handler")
            wait_for(parent.pid, False, "the runner take SIGINT over")
            time.sleep(moment)
        members = group(parent.pid)
        os.killpg(parent.pid, signal.SIGINT)
        with gevent.Timeout(BOUND, AssertionError(f"stderr still open after {BOUND} s")):
            err = parent.stderr.read()  # EOF: every process holding it is gone
        assert parent.wait(timeout=BOUND) == -signal.SIGINT
        deadline = time.monotonic() + BOUND
        while group(parent.pid) and time.monotonic() < deadline:
            gevent.sleep(0.02)
        assert group(parent.pid) == [], f"still running after {BOUND} s (group had {members})"
        assert b"Traceback" not in err and b"KeyboardInterrupt" not in err, err.decode()
        assert err == b""
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
