"""IPC benchmarks of gipc; prints one JSON line of figures.

Usage: python gipc_parent.py stream N | pingpong N | large SIZE COUNT

The same benchmarks and messages as ``benchmarks/geventfork_ipc/parent.py``
(see ``_common.py``), over ``gipc.pipe(duplex=True)`` (two pipes, pickle,
a 4-byte length before each message) to a child started with
``gipc.start_process()``, gipc's own way (``multiprocessing``, which forks
on Linux). Both ends run patched by gevent and use gipc's cooperative
``put()`` and ``get()``.
"""

import sys

from gevent import monkey

monkey.patch_all()

import gipc  # noqa: E402

from _common import main, serve  # noqa: E402
from _common_pipe import yield_to_loop  # noqa: E402


def child(end: object, mode: str, n: int) -> None:
    """The child process: ``serve`` over its end of the pipe."""
    # gipc closes the parent's ends that the fork copied with os.close(),
    # which gevent (25.8.1 on) defers to the loop's next turn: without one
    # the child may keep the parent's write end and never see EOF.
    yield_to_loop()
    serve(end.get, end.put, mode, n)


def start(mode: str, n: int) -> tuple:
    """Start the child with one end of a new duplex pipe; return our ``(get, put, finish)``."""
    theirs, ours = gipc.pipe(duplex=True)
    process = gipc.start_process(child, args=(theirs, mode, n))

    def finish() -> None:
        ours.close()
        yield_to_loop()  # the child exits on EOF, which the close must bring first
        process.join()

    return ours.get, ours.put, finish


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], start))
