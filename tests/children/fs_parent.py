"""Fork echo.py through the fork server, print what was started, then wait.

Prints one JSON line: {"forked": BOOL, "template": PID, "child": PID}.
With the argument "exit": stop the child and exit with status 0 instead of
sleeping (the templates are reaped on the way out).
"""

import json
import os
import sys

import gevent

from geventfork import _forkserver, fork

child = fork(os.path.join(os.path.dirname(__file__), "echo.py"))
((template, _fd),) = _forkserver.templates()
print(
    json.dumps(
        {
            "forked": isinstance(child._popen, _forkserver.Adopted),
            "template": template,
            "child": child.pid,
        }
    ),
    flush=True,
)
if sys.argv[1:] == ["exit"]:
    child.kill()
    child.wait()
    sys.exit(0)
gevent.sleep(60)
