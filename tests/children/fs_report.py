"""Send the parent how this child was started, as a spawned child would see it, then exit.

Everything but what differs between any two children (pid, random numbers,
the channel's fd number) is compared between start methods by the tests.
"""

import os
import random
import resource
import signal
import sys
import threading

from gevent import monkey

import __main__
from geventfork import process


def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return line.split()[1]
    return None


umask = os.umask(0)
os.umask(umask)
process.send(
    {
        "argv": process.argv,
        "sys_argv": sys.argv,
        "orig_argv": getattr(sys, "orig_argv", None),
        "path": sys.path,
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "ppid": os.getppid(),
        "pgrp": os.getpgrp(),
        "umask": umask,
        "blocked": status("SigBlk"),
        "ignored": status("SigIgn"),
        "caught": status("SigCgt"),
        "sigint": repr(signal.getsignal(signal.SIGINT)),
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "patched": monkey.is_module_patched("socket"),
        "main_thread": threading.current_thread() is threading.main_thread(),
        "main_file": __main__.__file__,
        "name": __name__,
        "stdout_line_buffered": sys.stdout.line_buffering,
        "stdin_name": sys.stdin.name if sys.stdin else None,
        "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        "cmdline": open("/proc/self/cmdline", "rb").read().rstrip(b"\0").decode().split("\0"),
        "pid": os.getpid(),
        "random": random.random(),
        "fileno": process.channel.fileno(),
    }
)
