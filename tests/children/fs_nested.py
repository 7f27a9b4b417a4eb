"""Fork echo.py (from a template of this child's own) and relay its answer.

Sends {"answer": ..., "forked": BOOL, "template_parent": PID} and exits
once the grandchild has.
"""

import os

from geventfork import _forkserver, fork, process

grandchild = fork(os.path.join(os.path.dirname(__file__), "echo.py"))


def parent_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@grandchild.on("message")
def relay(message, handle):
    ((template, _fd),) = _forkserver.templates()
    process.send(
        {
            "answer": message,
            "forked": isinstance(grandchild._popen, _forkserver.Adopted),
            "template_parent": parent_of(template),
        }
    )
    grandchild.disconnect()


grandchild.send("from the grandchild")
