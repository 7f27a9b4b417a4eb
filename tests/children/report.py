"""Send the parent one message describing how this child was started, then exit."""

import os
import stat
import sys

from gevent import monkey

from geventfork import process

fd = process.channel.fileno()
process.send(
    {
        "argv": process.argv,
        "connected": process.connected,
        "sys_argv": sys.argv,
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "optimize": sys.flags.optimize,
        "patched": monkey.is_module_patched("socket"),
        "fileno": fd,
        "fileno_is_socket": stat.S_ISSOCK(os.fstat(fd).st_mode),
    }
)
