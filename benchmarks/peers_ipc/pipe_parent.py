"""IPC benchmarks of ``multiprocessing.Pipe``; prints one JSON line of figures.

Usage: python pipe_parent.py [--gevent] stream N | pingpong N | large SIZE COUNT

The same benchmarks and messages as ``benchmarks/geventfork_ipc/parent.py``
(see ``_common.py``), over a ``multiprocessing.Pipe()`` (a socket pair,
pickle, a 4-byte length before each message) to ``pipe_child.py``, a fresh
interpreter started with the child's end of the pipe.

Without ``--gevent`` both processes are plain Python and block in
``Connection.send()`` and ``recv()``: the most the standard library gives.
With it both are patched by gevent and wait cooperatively (``wait_write``
or ``wait_read`` on the connection's fd) before each ``send()`` or
``recv()``, as a gevent program must not block its hub.
"""

import sys

GEVENT = "--gevent" in sys.argv[1:]
if GEVENT:
    from gevent import monkey

    monkey.patch_all()

import multiprocessing  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402

from _common import main  # noqa: E402
from _common_pipe import transport, yield_to_loop  # noqa: E402

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pipe_child.py")


def start(mode: str, n: int) -> tuple:
    """Start ``pipe_child.py`` with one end of a new Pipe; return our ``(get, put, finish)``."""
    ours, theirs = multiprocessing.Pipe()
    argv = [sys.executable, CHILD, str(theirs.fileno()), mode, str(n)]
    child = subprocess.Popen(argv + (["--gevent"] if GEVENT else []), pass_fds=[theirs.fileno()])
    theirs.close()
    get, put = transport(ours, GEVENT)

    def finish() -> None:
        ours.close()
        if GEVENT:
            yield_to_loop()
        child.wait()

    return get, put, finish


if __name__ == "__main__":
    sys.exit(main([a for a in sys.argv[1:] if a != "--gevent"], start))
