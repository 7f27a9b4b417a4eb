"""The child of ``pipe_parent.py``. Usage: pipe_child.py FD MODE N [--gevent]

FD is its end of the Pipe; see ``_common.serve`` for MODE and N.
"""

import sys

GEVENT = "--gevent" in sys.argv[1:]
if GEVENT:
    from gevent import monkey

    monkey.patch_all()

from multiprocessing.connection import Connection  # noqa: E402

from _common import serve  # noqa: E402
from _common_pipe import transport  # noqa: E402

if __name__ == "__main__":
    conn = Connection(int(sys.argv[1]))
    serve(*transport(conn, GEVENT), sys.argv[2], int(sys.argv[3]))
    conn.close()
