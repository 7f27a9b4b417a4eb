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
which start with SIGINT blocked. So the moments start at the runner's
takeover: right after the parent's ``exec`` a SIGINT may land before
CPython's handler (the process dies quietly) or after it (CPython's
traceback), as the machine's load decides, which no test can pin down.

In the runner's first phase SIGINT has no handler (its default action ends
the process quietly); once the script runs, Python's handler is back and
gevent catches SIGCHLD as soon as the script forks: that is how the test
knows it missed the phase, and starts again.
"""

import os
import signal
import subprocess
import sys
import time

import gevent
import pytest

from helpers import CHILDREN_DIR, proc_stat, python_env

#: Seconds after which every process of the group must be gone.
BOUND = 5.0


def handlers(pid):
    """``(SIGINT caught, SIGCHLD caught)`` for ``pid``, from ``SigCgt`` (None once gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    caught = int(line.split()[1], 16)
                    return tuple(
                        bool(caught & (1 << (sig - 1))) for sig in (signal.SIGINT, signal.SIGCHLD)
                    )
    except OSError:
        pass
    return None


def runner_took_over(pid):
    """Poll ``pid`` (busily: the phases last tens of ms) until the runner takes SIGINT over.

    Returns True at that moment, or False if the moment was missed: the
    script already runs (SIGINT caught again and SIGCHLD caught, as gevent
    does once the script forks) without our having seen the runner's phase.
    """
    deadline = time.monotonic() + 10
    seen_cpython = False
    while time.monotonic() < deadline:
        state = handlers(pid)
        if state is None:
            pytest.fail("the parent exited before Ctrl-C")
        sigint, sigchld = state
        if sigint and sigchld:
            return False
        if sigint:
            seen_cpython = True
        elif seen_cpython:
            return True
    pytest.fail("the parent never got as far as running the script")


def group(pgid):
    """The live (non-zombie) processes of process group ``pgid``."""
    found = []
    for name in os.listdir("/proc"):
        fields = proc_stat(name) if name.isdigit() else None
        if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(name))
    return found


@pytest.mark.parametrize("moment", [0.0, 0.1, 0.3, 0.6, 0.9, 1.2])
def test_ctrl_c_at_any_moment(popen, moment):
    for _attempt in range(5):  # a loaded machine may hide the runner's first 0.1 s from us
        parent = start_parent(popen)
        if runner_took_over(parent.pid):
            break
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(timeout=BOUND)
    else:
        pytest.skip("could not see when the runner took SIGINT over in 5 attempts")
    try:
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


def start_parent(popen):
    parent = subprocess.Popen(
        [sys.executable, "-m", "geventfork", os.path.join(CHILDREN_DIR, "ctrl_c_parent.py")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=python_env(),
        start_new_session=True,  # a process group of its own, as a shell gives a job
    )
    popen.append(parent)
    return parent
